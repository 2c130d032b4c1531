"""The model's kernel tools: filters are data not code, secrets stay hidden, results stay capped, nothing raises."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest

from oblix_jupyter.kernel import describe as describe_module
from oblix_jupyter.kernel import tools as tools_module
from oblix_jupyter.kernel.state import format_error
from oblix_jupyter.kernel.tools import CellHistory, KernelTools
from oblix_jupyter.kernel.variables import approximate_tokens

SECRET = "sk-live-0123456789abcdef"
FRAME = pd.DataFrame(
    {
        "city": ["Paris", "Lyon", "Paris", "Nice", None, "Paris"],
        "price": [10.0, 20.5, 30.0, np.nan, 5.0, 12.0],
        "qty": [1, 2, 3, 4, 5, 6],
        "when": pd.date_range("2024-01-01", periods=6),
        "size": pd.Categorical(["S", "M", "L", "S", "M", "L"]),
    }
)
BIG = pd.DataFrame({"n": np.arange(5000), "text": [f"row {i} " + "words " * 20 for i in range(5000)]})


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


def _raise() -> None:
    raise ZeroDivisionError("division by zero")


try:
    _raise()
except ZeroDivisionError as error:
    ERROR = format_error(error)

NAMESPACE = {"df": FRAME, "big": BIG, "arr": np.arange(12.0), "cfg": {"alpha": 0.1}, "broken": Broken(), "api_key": SECRET,
             "np": np, "_hidden": 1, "In": [], "Out": {}}
CELLS = CellHistory(["", "df.head()", f"api_key = {SECRET!r}", "api_key", "print(1)"], {1: FRAME.head(2), 3: SECRET}, ERROR)
EXAMPLES = {
    "list_variables": {},
    "describe_variable": {"name": "df", "column": "city"},
    "dataframe_rows": {"name": "df", "where": [{"column": "qty", "op": ">", "value": 2}], "columns": ["city"], "limit": 2},
    "search_conversation": {"query": "prices", "limit": 2},
    "notebook_cell": {"number": 1},
    "last_error": {},
}


def search(query: str, limit: int) -> list[str]:
    return [f"user: what about {query}?", "assistant: prices rose 3%"][:limit]


def make(named: tuple[str, ...] = (), **options) -> KernelTools:
    return KernelTools(NAMESPACE, named, cells=CELLS, search=search, **options)


def shown(text: str) -> list[int]:
    """The index labels of the rows in a result's table."""
    return [int(line.split("|")[1]) for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]


def rows(*where: dict, **options) -> tuple[list[int], str]:
    result = make().run("dataframe_rows", {"name": "df", "where": list(where), **options})
    assert result.ok, result.text
    return shown(result.text), result.text


def test_a_filter_gives_the_exact_rows_and_count():
    index, text = rows({"column": "price", "op": ">", "value": "9"}, {"column": "city", "op": "==", "value": "Paris"})
    assert index == [0, 2, 5]
    assert "3 of 6 rows match" in text
    assert make().run("dataframe_rows", {"name": "df", "where": [{"column": "qty", "op": ">", "value": 2}]}).summary == (
        "looked at `df`: rows where qty > 2, 4 of 4 shown"
    )


@pytest.mark.parametrize(
    "where, combine, expected",
    [
        ([{"column": "city", "op": "==", "value": "Lyon"}, {"column": "qty", "op": ">=", "value": 5}], "or", [1, 4, 5]),
        ([{"column": "city", "op": "!=", "value": "Paris"}, {"column": "price", "op": "<", "value": 21}], "and", [1, 4]),
        ([{"column": "city", "op": "in", "value": ["Lyon", "Nice"]}], "and", [1, 3]),
        ([{"column": "city", "op": "not in", "value": ["Lyon", "Nice"]}], "and", [0, 2, 4, 5]),
        ([{"column": "city", "op": "contains", "value": "ar"}, {"column": "city", "op": "startswith", "value": "N"}], "or", [0, 2, 3, 5]),
        ([{"column": "city", "op": "contains", "value": "P.r"}], "and", []),  # a literal, not a regular expression
        ([{"column": "price", "op": "isna"}, {"column": "city", "op": "==", "value": None}], "or", [3, 4]),
        ([{"column": "city", "op": "notna"}, {"column": "price", "op": "<=", "value": 10}], "and", [0]),
        ([{"column": "when", "op": ">=", "value": "2024-01-05"}], "and", [4, 5]),
        ([{"column": "qty", "op": "in", "value": ["2", 3]}], "and", [1, 2]),
    ],
)
def test_conditions_combine_with_and_or(where, combine, expected):
    index, text = rows(*where, combine=combine)
    assert index == expected
    assert f"{len(expected)} of 6 rows match" in text


def test_a_value_that_looks_like_code_is_only_a_string(tmp_path):
    marker = tmp_path / "pwned"
    attack = f"__import__('os').system('touch {marker}')"
    for op in ("==", "contains", "startswith", ">"):
        index, text = rows({"column": "city", "op": op, "value": attack})
        assert index == [] and "0 of 6 rows match" in text
    refused = make().run("dataframe_rows", {"name": "df", "where": [{"column": attack, "op": "==", "value": 1}]})
    assert not refused.ok and "No column" in refused.text
    assert not marker.exists()


def test_secrets_are_withheld_unless_named():
    listing = make().run("list_variables", {})
    assert "`api_key`: str (looks like a secret" in listing.text and SECRET not in listing.text
    for name, arguments in [("describe_variable", {"name": "api_key"}), ("dataframe_rows", {"name": "api_key"})]:
        refused = make().run(name, arguments)
        assert not refused.ok and "the user must name it" in refused.text and SECRET not in refused.text
    cell = make().run("notebook_cell", {"number": 3})
    assert "withheld" in cell.text and SECRET not in cell.text
    assert SECRET not in make().run("notebook_cell", {"number": 2}).text  # blanked in the source too
    named = make(named=("api_key",))
    assert SECRET in named.run("describe_variable", {"name": "api_key"}).text
    assert SECRET in named.run("notebook_cell", {"number": 3}).text


def test_hidden_names_and_modules_are_not_variables():
    text = make().run("list_variables", {}).text
    assert [line.split("`")[1] for line in text.splitlines()[1:]] == ["df", "big", "arr", "cfg", "broken", "api_key"]
    for name in ("np", "_hidden", "In"):
        result = make().run("describe_variable", {"name": name})
        assert not result.ok and f"No variable `{name}`" in result.text


@pytest.mark.parametrize(
    "name, arguments, message",
    [
        ("drop_table", {}, "Unknown tool 'drop_table'. Tools: list_variables,"),
        ("dataframe_rows", '{"name": "df", ', "not valid JSON"),
        ("dataframe_rows", "[1, 2]", "The arguments must be an object"),
        ("dataframe_rows", {"name": "df", "limit": "ten"}, "`limit` must be an integer"),
        ("dataframe_rows", {"name": "df", "colour": "red"}, "Unknown argument 'colour'"),
        ("dataframe_rows", {"where": []}, "Missing argument 'name'"),
        ("dataframe_rows", {"name": "dff"}, "No variable `dff` in the notebook. Did you mean `df`?"),
        ("dataframe_rows", {"name": "cfg"}, "`cfg` is a dict, not a DataFrame"),
        ("describe_variable", {"name": "df", "column": "citty"}, "No column `citty` in `df`. Did you mean `city`?"),
        ("dataframe_rows", {"name": "df", "where": [{"column": "city", "op": "like", "value": "P%"}]}, "`where[0].op` must be one of =="),
        ("dataframe_rows", {"name": "df", "where": [{"column": "city", "op": "=="}]}, "needs a `value`"),
        ("dataframe_rows", {"name": "df", "where": [{"column": "qty", "op": ">", "value": "many"}]}, "'many' is not a number"),
        ("dataframe_rows", {"name": "df", "where": [{"column": "when", "op": "<", "value": "soon"}]}, "'soon' is not one"),
        ("dataframe_rows", {"name": "df", "where": [{"column": "qty", "op": "contains", "value": "1"}]}, "works on text columns"),
        ("dataframe_rows", {"name": "df", "where": [{"column": "city", "op": "in", "value": "Paris"}]}, "needs a list"),
        ("dataframe_rows", {"name": "df", "where": [{"column": "size", "op": "<", "value": "M"}]}, "cannot be evaluated"),
        ("notebook_cell", {"number": 9}, "No cell 9: cells run so far are numbered 1-4."),
    ],
)
def test_bad_calls_fail_with_a_clear_message(name, arguments, message):
    result = make().run(name, arguments)
    assert not result.ok
    assert message in result.text and "Traceback" not in result.text
    assert result.summary.startswith(f"{name} failed: ")


def test_odd_objects_and_values_are_described_without_raising():
    broken = make().run("describe_variable", {"name": "broken"})
    assert broken.ok and broken.text.endswith("Broken: (its repr failed or took too long)")
    array = make().run("describe_variable", {"name": "arr"}).text
    assert "shape (12,)" in array and "min 0, max 11, mean 5.5, std 3.45205" in array
    frame = make().run("describe_variable", {"name": "df", "column": "city"}).text
    assert "| price | float64 | 1 |" in frame and "| Paris | 3 |" in frame and "| count | mean |" in frame
    no_output = make().run("notebook_cell", {"number": 4}).text
    assert "print(1)" in no_output and "stored no output" in no_output
    assert make().run("last_error", {}).text.endswith("ZeroDivisionError: division by zero")


def test_results_stay_within_the_cap():
    tight = make(cap_tokens=300)
    table = tight.run("dataframe_rows", {"name": "big", "limit": 200})
    assert approximate_tokens(table.text) <= 300 and "[… cut: " in table.text and "more rows]" in table.text
    assert table.summary == f"looked at `big`: head rows, {len(shown(table.text))} of 5,000 shown"
    long_text = KernelTools({"essay": "word " * 10_000}, cap_tokens=100).run("describe_variable", {"name": "essay"}).text
    assert approximate_tokens(long_text) <= 100 and long_text.endswith("more characters]")
    many = KernelTools({f"v{n}": n for n in range(1000)}, cap_tokens=200).run("list_variables", {}).text
    assert approximate_tokens(many) <= 200 and "more variables]" in many


def test_head_tail_and_sample_are_deterministic(monkeypatch):
    def index(**options) -> list[int]:
        result = make().run("dataframe_rows", {"name": "big", "columns": ["n"], **options})
        return shown(result.text)

    assert index(limit=3) == [0, 1, 2]
    assert index(mode="tail", limit=3) == [4997, 4998, 4999]
    sample = index(mode="sample", limit=5)
    assert sample == index(mode="sample", limit=5) == sorted(sample) and len(set(sample)) == 5
    assert index(mode="sample", limit=5, seed=7) != sample
    assert index(limit=500) == list(range(200))  # the most a call shows
    monkeypatch.setattr(describe_module, "SAMPLE_ROWS", 1000)
    described = make().run("describe_variable", {"name": "big"}).text
    assert "describe() of a seeded random sample of 1,000 rows" in described
    assert described == make().run("describe_variable", {"name": "big"}).text


def test_schemas_name_the_tools_run_accepts():
    schemas = make().schemas()
    assert [schema["function"]["name"] for schema in schemas] == list(EXAMPLES)
    for schema in schemas:
        assert schema["type"] == "function" and set(schema["function"]) == {"name", "description", "parameters"}
        parameters = schema["function"]["parameters"]
        assert parameters["type"] == "object" and set(parameters["required"]) <= set(parameters["properties"])
        json.dumps(schema)
        result = make().run(schema["function"]["name"], json.dumps(EXAMPLES[schema["function"]["name"]]))
        assert result.ok, result.text
    bare = KernelTools(NAMESPACE)
    assert [schema["function"]["name"] for schema in bare.schemas()] == ["list_variables", "describe_variable", "dataframe_rows"]
    assert not bare.run("notebook_cell", {"number": 1}).ok


def test_import_is_light_and_from_shell_reads_a_real_ipython(tmp_path):
    script = """
import json, sys
from oblix_jupyter.kernel.tools import KernelTools
heavy = sorted(m for m in ("pandas", "numpy", "litellm", "IPython") if m in sys.modules)
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
for source in ["import math\\nx = 41\\nx + 1", "print(x)", "1 / 0"]:
    shell.run_cell(source, store_history=True)
tools = KernelTools.from_shell(shell)
print(json.dumps([heavy] + [tools.run(name, args).text for name, args in
    [("list_variables", {}), ("notebook_cell", {"number": 1}), ("last_error", {})]]))
"""
    env = {"IPYTHONDIR": str(tmp_path), "PATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=True)
    heavy, listing, cell, error = json.loads(done.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert listing == "The notebook's variables (1):\n- `x`: int = 41"  # not math, open, In, Out, exit or quit
    assert cell.startswith("In [1]:\n```python\nimport math") and cell.endswith("Out[1]:\n42")
    assert error.endswith("ZeroDivisionError: division by zero")


class Shelf(Mapping):
    """A Mapping that is not a dict, like ``shelve``: every read of an item runs code (there: unpickling)."""

    def __init__(self) -> None:
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        raise AssertionError("an item was read")

    def __iter__(self):
        self.reads += 1
        return iter(["payload"])

    def __len__(self) -> int:
        return 1


def test_only_builtin_containers_pandas_and_numpy_are_looked_into():
    shelf = Shelf()
    tools = KernelTools({"shelf": shelf, "cfg": {"alpha": 1}})
    listing = tools.run("list_variables", {}).text
    described = tools.run("describe_variable", {"name": "shelf"})
    assert described.ok and "`shelf`: test_tools.Shelf: <test_tools.Shelf object at" in described.text
    assert "- `shelf`: test_tools.Shelf" in listing and "- `cfg`: dict of 1 keys {'alpha': int}" in listing
    assert shelf.reads == 0, "a Mapping of the user's own was indexed or iterated"


def test_secret_columns_and_keys_are_withheld_unless_the_variable_is_named():
    frame = pd.DataFrame({"city": ["Paris", "Lyon"], "api_key": ["tok-1111", "tok-2222"], "n": [1, 2]})
    config = {"db": {"host": "db", "password": "pw-3333"}, "region": "eu"}
    tools = KernelTools({"frame": frame, "config": config})
    rows = tools.run("dataframe_rows", {"name": "frame"}).text
    assert "| 0 | Paris | [withheld: secret-looking] | 1 |" in rows and "tok-" not in rows
    described = tools.run("describe_variable", {"name": "frame"}).text
    assert "Values of `api_key` withheld: secret-looking column names." in described and "tok-" not in described
    for arguments in ({"name": "frame", "column": "api_key"}, {"name": "frame", "where": [{"column": "api_key", "op": "startswith", "value": "tok-1"}]}):
        name = "describe_variable" if "column" in arguments else "dataframe_rows"
        refused = tools.run(name, arguments)
        assert not refused.ok and "has a secret-looking name" in refused.text, "no oracle on a secret column's values"
    nested = tools.run("describe_variable", {"name": "config"}).text
    assert "'host': 'db', 'password': [withheld: secret-looking]" in nested and "'region'" in nested and "pw-3333" not in nested


def test_the_limits_are_told_and_held():
    schemas = {schema["function"]["name"]: schema["function"] for schema in KernelTools(NAMESPACE, rounds=5).schemas()}
    assert f"Limits: {tools_module.MAX_CALLS} tool calls a request, 5 requests a turn" in schemas["list_variables"]["description"]
    where = schemas["dataframe_rows"]["parameters"]["properties"]["where"]
    assert where["maxItems"] == tools_module.MAX_CONDITIONS and f"at most {tools_module.MAX_CONDITIONS}" in where["description"]
    many = [{"column": "qty", "op": ">", "value": n} for n in range(tools_module.MAX_CONDITIONS + 1)]
    refused = make().run("dataframe_rows", {"name": "df", "where": many})
    assert not refused.ok and f"At most {tools_module.MAX_CONDITIONS} conditions per call" in refused.text
    listed = make().run("dataframe_rows", {"name": "df", "where": [{"column": "qty", "op": "in", "value": list(range(101))}]})
    assert not listed.ok and "at most 100 values in a list" in listed.text


def test_a_filter_reads_blocks_and_stops_at_its_time_limit(monkeypatch):
    monkeypatch.setattr(tools_module, "FILTER_BLOCK", 1000)
    whole = {"name": "big", "where": [{"column": "n", "op": ">=", "value": 10}], "columns": ["n"], "mode": "sample", "limit": 5}
    sampled = make().run("dataframe_rows", whole).text
    assert "4,990 of 5,000 rows match" in sampled and len(shown(sampled)) == 5 and all(n >= 10 for n in shown(sampled))
    tail = make().run("dataframe_rows", {**whole, "mode": "tail", "limit": 3}).text
    assert shown(tail) == [4997, 4998, 4999]
    monkeypatch.setattr(tools_module, "FILTER_SECONDS", 0.0)
    stopped = make().run("dataframe_rows", {**whole, "mode": "head", "limit": 3}).text
    assert "`big`: rows where n >= 10: 990 match in the first 1,000 of 5,000 rows (the search stops after 0 s" in stopped
    assert shown(stopped) == [10, 11, 12]


def test_a_named_secret_variable_is_shown_whole_for_the_turn_only():
    named = make(named=("api_key",))
    assert SECRET in named.run("notebook_cell", {"number": 2}).text
    assert SECRET not in named.recorded("notebook_cell", {"number": 2}, named.run("notebook_cell", {"number": 2}).text)
    assert named.recorded("list_variables", {}, "same") != "same"
    assert make().recorded("list_variables", {}, "same") == "same", "nothing named: the record is the result"
