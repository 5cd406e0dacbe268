"""The console: web pages to look at people, segments, models and operations, served by
`persona serve` at /console (docs/console.md).

Signed in with an API token, each page reads through the GraphQL schema in process
(persona.console.client), so what a page shows is what that token may read over HTTP, and
every view of a person is in the audit log like an API read.
"""

from persona.console.pages import Console

__all__ = ["Console"]
