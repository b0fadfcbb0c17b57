"""The composition root: :class:`~dupwatch.settings.Settings` turned into each part's typed
options, and the parts built from them, in one place.

``Settings`` is what the user gave (flags, ``DUPWATCH_*``); the folders below (``index/``,
``messaging/``, ``imaging/``, ``pipeline/``, ``detectors/``) never see it, only the small frozen
options each takes, and the import contract (pyproject.toml) keeps it so. Every command builds
its parts here, so a setting read here reaches every worker, shard and benchmark alike; values
that cannot work raise :class:`~dupwatch.errors.ConfigError` naming the setting.

- :mod:`.kafka`: the Kafka clients (``KafkaOptions``, ``TopicOptions``): publisher, reader,
  topics. Light: the commands that only talk to Kafka import nothing else.
- :mod:`.cascade`: the cascade (``detectors.options.Options``) and the processor
  (``ProcessorOptions``, ``FetchOptions``) of a worker or ``dupwatch scan``.
- :mod:`.worker`: a worker (``ShardOptions`` for its sharded store) and its Faust app.
"""
