"""The mappings of the built-in sources (`persona ingest FILE --source NAME`)."""
