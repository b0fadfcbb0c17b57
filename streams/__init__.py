"""Everything that touches Kafka and Faust: the worker, topics, publishing, the CLI."""
