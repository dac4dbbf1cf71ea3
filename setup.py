"""Build the optional Cython dispatch core.

The pure-Python twin in ``streamq/dispatch.py`` behaves identically, so a machine without a C
compiler still gets a working install: the build falls back instead of failing. CI asserts the
compiled module loaded (tests/conftest.py), so a silent fallback there is caught.

Knobs: STREAMQ_NO_EXTENSIONS=1 skips the build, STREAMQ_CYTHON_ANNOTATE=1 writes the annotated
HTML next to the .pyx, STREAMQ_CYTHON_DEBUG=1 compiles with -O0 -g.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but fall back to pure Python when compiling fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            print(
                f"streamq: C extension not built ({exc}); using the pure-Python core",
                file=sys.stderr,
            )

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(
                f"streamq: {ext.name} not built ({exc}); using the pure-Python core",
                file=sys.stderr,
            )


def extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("STREAMQ_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("streamq: Cython missing; using the pure-Python core", file=sys.stderr)
        return []
    from setuptools import Extension

    debug = bool(os.environ.get("STREAMQ_CYTHON_DEBUG"))
    args = ["-O0", "-g"] if debug else ["-O2", "-Wall"]
    return cythonize(
        [Extension("streamq._dispatch", ["ext/_dispatch.pyx"], extra_compile_args=args)],
        annotate=bool(os.environ.get("STREAMQ_CYTHON_ANNOTATE")),
        compiler_directives={"language_level": "3"},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
