"""The compiled bbolt walker is optional: without a C compiler (or Python headers) the build
skips it and the pure-Python reader does the same work, slower. Everything else is in
pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "etcd_backupd.snapshot._walker",
            ["etcd_backupd/snapshot/_walker.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
