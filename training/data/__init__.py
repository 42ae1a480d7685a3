"""Synthetic data engine (``d2a-data``) and dataset readers.

Modules: ``posing`` (ID / OOD pose and shape samplers), ``appearance`` (skin, clothing, lights,
backgrounds), ``skinning`` (batched LBS), ``render`` (moderngl + EGL), ``effects`` (image
effects), ``engine`` (one sample = scene + camera + crop + render + labels), ``shards`` (writer,
manifest, resume, numpy reader), ``dataset`` (torch ``ShardDataset``, ``OnTheFlyDataset``,
``SpinNpzDataset``), ``realdata`` (SPIN/HMR2 npz), ``preview`` (contact sheets), ``cli``.
Nothing is imported here so that ``import d2a_edge.training.data`` stays cheap and torch-free.
"""
