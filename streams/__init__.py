"""The Faust worker: the app and its agents, batching events into the pipeline, the sharing of
the cascade between the stream and synchronous lookups, health, the worker's log and process."""
