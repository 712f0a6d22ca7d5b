"""Build of the C extensions (the bus's hot path, regime labels, the store's price encoding); the rest is in
pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tradetrace.events._hotbus", ["src/tradetrace/events/_hotbus.c"],
                  extra_compile_args=["-O2", "-std=c11"]),
        Extension("tradetrace.store._prices", ["src/tradetrace/store/_prices.c"],
                  extra_compile_args=["-O2", "-std=c11"]),
        Extension("tradetrace.engine._regimes", ["src/tradetrace/engine/_regimes.c"],
                  extra_compile_args=["-O2", "-std=c11"]),
    ],
)
