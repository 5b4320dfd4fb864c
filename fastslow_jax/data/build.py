"""``fastslow data build NAME``: prepare a dataset once, with a progress bar and the end-of-build report."""
from __future__ import annotations

import os
import shutil

from fastslow_jax.data import pipeline


def build(name: str, *, manual_dir: str | None, data_dir: str | None, force: bool = False, out=print):
    """Build dataset ``name`` (``name`` or ``name/config``) into ``data_dir``; returns the builder.

    An already built dataset is left as it is (its report is shown again) unless ``force``, which
    rebuilds it from ``manual_dir``. Writes the report of `builders.base` for the builders over users' files."""
    import tensorflow_datasets as tfds
    from fastslow_jax.data.builders import base

    base_name, _, variant = name.partition("/")
    registry = pipeline._builder_registry()
    if base_name not in registry:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(registry)}")
    if manual_dir is not None and not os.path.isdir(os.path.expanduser(manual_dir)):
        raise FileNotFoundError(f"--manual-dir {manual_dir} is not a folder")
    data_dir = os.path.expanduser(data_dir or pipeline.DEFAULT_DATA_DIR)
    builder = registry[base_name](config=variant or None, data_dir=data_dir)
    if pipeline._is_prepared(builder) and not force:
        out(f"{name} is already built in {builder.data_dir} (pass --force to rebuild it)")
    else:
        if force and os.path.isdir(builder.data_dir):
            # the prepared files of this one dataset version (DATA_DIR/NAME/CONFIG/VERSION) only
            shutil.rmtree(builder.data_dir)
            builder = registry[base_name](config=variant or None, data_dir=data_dir)
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                manual_dir=os.path.expanduser(manual_dir) if manual_dir else None))
        builder = registry[base_name](config=variant or None, data_dir=data_dir)  # re-read the written info
    if isinstance(builder, base.ManualBuilder):
        out(base.format_report(base.read_report(builder)))
    splits = ", ".join(f"{builder.info.splits[s].num_examples} {s}" for s in builder.info.splits)
    out(f"{name}: {splits} examples in {builder.data_dir}")
    return builder
