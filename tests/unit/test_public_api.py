import streamq


def test_exported_members() -> None:
    public = sorted(
        (n for n in vars(streamq) if not n.startswith("_") and n != "annotations"),
        key=str.casefold,
    )
    exported = sorted(streamq.__all__, key=str.casefold)
    assert [n for n in exported if n != "__version__"] == [
        n for n in public if n in exported or not _is_module(n)
    ]


def _is_module(name: str) -> bool:
    import types

    return isinstance(getattr(streamq, name), types.ModuleType)


def test_every_exported_name_has_a_docstring() -> None:
    for name in streamq.__all__:
        obj = getattr(streamq, name)
        if isinstance(obj, str):
            continue
        assert (obj.__doc__ or "").strip(), name
