"""What the command line and the API both do, as plain typed functions over an open Persona.

Each front end parses its input, calls one of these, and reports the result in its own way
(click's lines and exit codes; GraphQL's types and error codes); neither touches the store.

- persona.services.people: erase, link and unlink people, and find who they are.
- persona.services.store: what the store holds as a whole (counts, health, the quarantine).
- persona.services.models: train and publish a model, promote, roll back, rebuild and rescore.
  It loads scikit-learn and skops: callers import it when a command or request needs it.

The caches that hold personal data are persona.caches.forget_caches'; privacy budgets and
tokens are persona.tokens'.
"""
