"""Build of the one C extension (the bus's hot path); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tradetrace.events._hotbus", ["src/tradetrace/events/_hotbus.c"],
                  extra_compile_args=["-O2", "-std=c11"]),
    ],
)
