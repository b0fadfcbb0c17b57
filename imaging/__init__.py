"""Images in: files on disk, one guarded decode (limits, decode processes with time and memory
budgets, per-tenant slots) into the :class:`~dupwatch.imaging.image.ImageInput` every stage
reads, and the bundled sample photos."""
