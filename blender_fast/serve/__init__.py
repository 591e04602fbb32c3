"""Serving: the continuous-batching engine, the HTTP app and its client."""
