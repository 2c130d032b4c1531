"""Variable summaries by type, within caps; secrets; broken objects; the notebook's last error and cells."""

from __future__ import annotations

import functools
import sys
import threading
import time
import types

import numpy as np
import pandas as pd
import pytest

from oblix_jupyter.kernel import text as text_module
from oblix_jupyter.kernel.state import (
    format_error,
    gather_notebook_context,
    is_notebook_frame,
)
from oblix_jupyter.kernel.variables import referenced_names, summarize_variables
from oblix_jupyter.models.gateway import count_tokens


@functools.lru_cache(maxsize=None)
def count(text: str) -> int:
    return count_tokens("gpt-4o-mini", text)


def area(width: float, height: float = 1.0) -> float:
    """Area of a rectangle.

    More detail that is not shown."""
    return width * height


class Model:
    """A tiny model class."""

    def __init__(self, alpha: float = 0.5) -> None:
        self.alpha = alpha


class Opaque:
    def __repr__(self) -> str:
        return "Opaque(state=ready)"


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class Slow:
    def __repr__(self) -> str:
        threading.Event().wait(5)
        return "never seen"


FRAME = pd.DataFrame({"store": [1, 2, 3, 4, 5, 6], "units": [3.0, None, 5.0, 1.0, 2.0, 9.0], "region": list("nsnsns")})
NAMESPACE = {
    "df": FRAME,
    "units": FRAME["units"],
    "arr": np.arange(12, dtype=np.float64).reshape(3, 4),
    "labels": np.array(["a", "b"]),
    "rows": [1, 2, 3, 4, 5, 6, 7],
    "pair": ("x", 2),
    "tags": {"red"},
    "config": {"alpha": 0.1, "features": ["a", "b"]},
    "note": "hello " * 100,
    "area": area,
    "Model": Model,
    "thing": Opaque(),
    "broken": Broken(),
    "np": np,
}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("df", ["pandas DataFrame, 6 rows × 3 columns", "store int64", "missing values: units 1", "| | store | units | region |"]),
        ("units", ["pandas Series 'units', length 6, dtype float64, 1 missing", "min 1, max 9, mean 4", "head():"]),
        ("arr", ["numpy array, shape (3, 4), dtype float64, min 0, max 11, mean 5.5", "first values [0.0, 1.0"]),
        ("labels", ["numpy array, shape (2,), dtype <U1"]),
        ("rows", ["list of 7 items: 1, 2, 3, 4, 5, …"]),
        ("pair", ["tuple of 2 items: 'x', 2"]),
        ("tags", ["set of 1 items: 'red'"]),
        ("config", ["dict of 2 keys {'alpha': float, 'features': list}"]),
        ("note", ["str of length 600: 'hello hello", "…"]),
        ("area", ["function area(width: 'float', height: 'float' = 1.0) -> 'float': Area of a rectangle."]),
        ("Model", ["class Model(alpha: 'float' = 0.5) -> 'None': A tiny model class."]),
        ("thing", ["test_variables.Opaque: Opaque(state=ready)"]),
        ("broken", ["`broken`: test_variables.Broken"]),
    ],
)
def test_each_type_is_summarised(name, expected):
    (summary,) = summarize_variables(NAMESPACE, f"look at {{{name}}}", count=count)
    assert summary.name == name and not summary.excluded and summary.warning is None
    for part in expected:
        assert part in summary.text, summary.text
    assert summary.tokens == count(summary.text) <= 200
    if name == "broken":
        assert summary.text == "`broken`: test_variables.Broken"  # the type only


@pytest.mark.parametrize("cap", [15, 40, 80])
def test_caps_are_respected(cap):
    wide = pd.DataFrame({f"column_{n}": range(50) for n in range(30)})
    namespace = {"wide": wide, "big": list(range(10_000)), "text": "x" * 5000, "arr": np.zeros((100, 100))}
    for summary in summarize_variables(namespace, "", named=list(namespace), cap_tokens=cap, count=count):
        assert summary.tokens <= cap, summary.text


def test_a_slow_repr_gives_the_type_only(monkeypatch):
    monkeypatch.setattr(text_module, "REPR_SECONDS", 0.05)
    (summary,) = summarize_variables({"slow": Slow()}, "why is slow slow?", count=count)
    assert summary.text == "`slow`: test_variables.Slow"


def test_which_variables_a_prompt_refers_to():
    namespace = {"df": 1, "x": 2, "a": 3, "model_v2": 4, "np": np, "In": [], "_": 5, "_i3": "", "Out": {}, "exit": 0}
    assert referenced_names("compare df with {x} and model_v2, using np and In, _ and _i3", namespace) == ["x", "df", "model_v2"]
    assert referenced_names("is a `a` problem?", namespace) == ["a"]  # one letter only when quoted
    assert referenced_names("", namespace, named=["np"]) == ["np"]  # modules only when named
    (summary,) = summarize_variables(namespace, "", named=["np"], count=count)
    assert summary.text == "`np`: module numpy"


def test_secrets_are_left_out_unless_named():
    namespace = {"openai_api_key": "sk-123456789", "TOKEN": "abc", "db_password": "hunter2", "df": FRAME}
    summaries = summarize_variables(namespace, "use openai_api_key, TOKEN, db_password and df", count=count)
    by_name = {s.name: s for s in summaries}
    for name in ("openai_api_key", "TOKEN", "db_password"):
        assert by_name[name].excluded and by_name[name].text == "" and "looks like a secret" in by_name[name].warning
    assert not by_name["df"].excluded
    (named,) = summarize_variables(namespace, "", named=["TOKEN"], count=count)
    assert not named.excluded and "'abc'" in named.text and "sent because --vars named it" in named.warning


def test_a_named_variable_that_does_not_exist_is_reported():
    (summary,) = summarize_variables({}, "", named=["missing"])
    assert summary.excluded and "not defined" in summary.warning


def _raise_in_cell():
    source = "def helper():\n    import json\n    json.loads('{bad')\nhelper()\n"
    code = compile(source, "/tmp/ipykernel_4242/1234567.py", "exec")
    try:
        exec(code, {})
    except Exception as error:
        return error


def test_the_last_error_is_trimmed_to_the_notebooks_frames(monkeypatch):
    error = _raise_in_cell()
    text = format_error(error, error.__traceback__)
    assert text.startswith("Traceback (most recent call last):")
    assert 'File "cell", line 4, in <module>' in text and 'File "cell", line 3, in helper' in text
    assert "[… library frames omitted …]" in text
    assert text.strip().endswith(str(error).splitlines()[0]) and "JSONDecodeError" in text
    assert is_notebook_frame("<ipython-input-3-1f2e3d4c5b6a>") and not is_notebook_frame("/usr/lib/python3/json/decoder.py")

    monkeypatch.setattr(sys, "last_value", error, raising=False)
    monkeypatch.setattr(sys, "last_traceback", error.__traceback__, raising=False)
    shell = types.SimpleNamespace(user_ns={"In": ["", "import json", "x = 1", "helper()", "%%oblix why did it fail?"]})
    context = gather_notebook_context(shell, cells=2)
    assert context.error == text
    assert context.cells == ("x = 1", "helper()")
    assert gather_notebook_context(types.SimpleNamespace(user_ns={}), cells=2).cells == ()


class LazyProxy:
    """A lazy object (an ORM row, a proxy): touching anything but its repr would load it."""

    touched: list[str] = []

    def __getattr__(self, name: str):
        LazyProxy.touched.append(name)
        raise AttributeError(name)

    @property
    def __class__(self):  # noqa: PLE0237 - isinstance() asks for it
        LazyProxy.touched.append("__class__")
        return LazyProxy

    def __iter__(self):
        LazyProxy.touched.append("__iter__")
        return iter(())

    def __len__(self) -> int:
        LazyProxy.touched.append("__len__")
        return 0

    def __repr__(self) -> str:
        return "<LazyProxy, not loaded>"


def test_other_objects_get_their_type_and_a_repr_and_nothing_else():
    LazyProxy.touched.clear()
    (summary,) = summarize_variables({"row": LazyProxy()}, "what is row?", count=count)
    assert summary.text == "`row`: test_variables.LazyProxy: <LazyProxy, not loaded>"
    assert LazyProxy.touched == []


def test_secrets_inside_variables_are_withheld_unless_named():
    frame = pd.DataFrame({"user": ["ann", "bob"], "password": ["pw-1111", "pw-2222"]})
    config = {"db": {"host": "db", "token": "tok-5555"}}
    namespace = {"frame": frame, "config": config, "thing": Opaque(), "dsn": "postgresql://ann:s3cr3t@db/app"}
    summaries = {s.name: s.text for s in summarize_variables(namespace, "frame config dsn", count=count)}
    assert "| 0 | ann | [withheld: secret-looking] |" in summaries["frame"] and "pw-1111" not in summaries["frame"]
    assert summaries["dsn"] == "`dsn`: str of length 30: 'postgresql://ann:[withheld: secret-looking]@db/app'"
    named = {s.name: s.text for s in summarize_variables(namespace, "", named=["frame"], count=count)}
    assert "pw-1111" in named["frame"], "--vars sends a variable as it is"


def test_text_of_reads_a_slice_and_shares_one_deadline(monkeypatch):
    from oblix_jupyter.kernel.text import text_budget, text_of

    huge, long = "x" * 50_000_000, list(range(10_000_000))
    assert text_of(huge, 20) == "'xxxxxxxxxxxxxxxxxx…" and text_of([huge, huge], 30).startswith("['xxx")
    assert text_of(long, 25) == "[0, 1, 2, 3, 4, 5, 6, 7, …"
    made: list[int] = []

    class Counted:
        def __repr__(self) -> str:
            made.append(1)
            return "c"

    assert text_of([Counted() for _ in range(1000)], 25) == "[c, c, c, c, c, c, c, c, …"
    assert len(made) <= 9, "only the slice shown is converted"
    started = time.perf_counter()
    with text_budget(0.3):
        shown = text_of([Slow() for _ in range(10)], 400)
    assert time.perf_counter() - started < 0.8 and shown == "[" + ", ".join(["<test_variables.Slow>"] * 10) + "]"
    assert text_of(Slow(), 50) is None


class Spinning:
    def __repr__(self) -> str:
        while True:
            pass


def test_a_conversion_given_up_is_stopped_not_left_spinning():
    from oblix_jupyter.kernel.text import text_of

    before = set(threading.enumerate())
    assert text_of(Spinning(), 50) is None
    (spinning,) = set(threading.enumerate()) - before
    spinning.join(5)
    assert not spinning.is_alive()
