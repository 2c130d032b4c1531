"""Kernel tools on a 1,000,000-row DataFrame: tokens sent per question, and each tool call's kernel time (#18).

A notebook holds ``orders``, a seeded 1,000,000-row frame of shop orders. Ten questions
need what the up-front summary (``summarize_variables``: shape, dtypes, missing values,
five rows) does not hold: counts under a filter, given rows, a column's categories. A
scripted model (the tests' loopback server) calls the tools a good model would, then
answers; each turn runs for real through ``OblixClient.execute_sync`` in this process,
beside an IPython shell holding the frame, so the tools are the kernel's own. For each
question the lines give:

- the tokens of every request the turn sent (messages, tool schemas, tool results),
  counted from the exact request bodies the server received, for ``openai/gpt-4o-mini``;
- the tokens of the same turn with ``tools=False`` (the frame's summary only), and
  whether that request holds the answer at all (it never does: the model could only
  guess), while the tool results do;
- each call's kernel time: ``KernelTools.run`` on the frame, median of 5 after one
  warm-up, counting tokens with the model's tokenizer uncached, as a first call does;
  beside it the bare pandas operation the call needs, run alternately with the call so
  a shared machine's drift lands on both. The goal is 100 ms unless pandas alone takes
  longer: a call over it is flagged MISSES only when pandas alone is within it.

The frame's text columns have pandas' default string dtype (``str``; Python-backed
without pyarrow, as in this environment), where every comparison, ``isna`` and
``value_counts`` walks a million Python strings. The last block times the same calls
with those columns as ``category``, as a user who converts them has it.
"""

from __future__ import annotations

import functools
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy
import pandas
from common import Behavior, ModelServer, paired_medians, report
from model_server import ToolCall

from oblix_jupyter import OblixClient, SessionManager
from oblix_jupyter.kernel.tools import KernelTools
from oblix_jupyter.kernel.variables import summarize_variables
from oblix_jupyter.models.gateway import count_tokens, litellm_module

MODEL = "openai/gpt-4o-mini"
ROWS = 1_000_000
NAME = "orders"
REPEAT = 5
GOAL_MS = 100.0
DESCRIBE_SAMPLE = 100_000  # rows describe() reads on a frame this big (describe.SAMPLE_ROWS)
CITIES = [
    "Paris", "Lyon", "Marseille", "Toulouse", "Nice", "Nantes", "Strasbourg", "Montpellier", "Bordeaux", "Lille", "Rennes", "Reims",
    "Le Havre", "Dijon",
]
PRODUCTS = [
    "Espresso machine", "Coffee grinder", "Milk frother", "French press", "Pour-over kettle", "Moka pot", "Tea infuser",
    "Travel mug", "Ceramic cup set", "Coffee beans 1kg", "Decaf beans 500g", "Cold brew bottle", "Descaler", "Tamper",
    "Knock box", "Scale", "Filter papers", "Cleaning brush",
]
STATUSES = ["delivered", "shipped", "processing", "cancelled", "returned"]
PAYMENTS = ["card", "paypal", "bank transfer", "cash on delivery"]


def orders_frame(rows: int = ROWS, seed: int = 18) -> pandas.DataFrame:
    """Shop orders over two years, oldest first: skewed cities and products, 2% of prices missing."""
    rng = numpy.random.default_rng(seed)

    def skewed(choices: Sequence[str]) -> numpy.ndarray:
        weights = 1 / numpy.arange(1, len(choices) + 1) ** 0.8
        return numpy.asarray(choices, dtype=object)[rng.choice(len(choices), rows, p=weights / weights.sum())]

    start = numpy.datetime64("2023-01-01T00:00:00", "s")
    seconds = numpy.sort(rng.integers(0, 2 * 365 * 86_400, rows))
    customers = numpy.asarray([f"C{n:06d}" for n in range(60_000)], dtype=object)
    price = numpy.round(rng.lognormal(3.6, 0.9, rows), 2)
    price[rng.random(rows) < 0.02] = numpy.nan
    return pandas.DataFrame(
        {
            "order_id": numpy.arange(100_000, 100_000 + rows),
            "date": start + seconds,
            "customer_id": customers[rng.integers(0, len(customers), rows)],
            "city": skewed(CITIES),
            "product": skewed(PRODUCTS),
            "price": price,
            "quantity": rng.integers(1, 11, rows),
            "status": skewed(STATUSES),
            "payment": skewed(PAYMENTS),
        }
    )


@dataclass
class Question:
    prompt: str
    rounds: list[list[ToolCall]]  # the tool calls of each request, in order; then a short text answer
    facts: list[str]  # text the answer needs: all of it must be in what the model was sent


def rows_call(**arguments: Any) -> ToolCall:
    return ToolCall("dataframe_rows", {"name": NAME, **arguments})


def questions(frame: pandas.DataFrame) -> list[Question]:
    """The ten questions, each with the calls a good model makes and the facts that answer it, computed with pandas."""

    def count(mask: Any) -> str:
        return f"{int(mask.sum()):,}"

    paris = (frame["city"] == "Paris") & (frame["price"] > 100)
    december = (frame["status"] == "cancelled") & (frame["date"] >= "2024-12-01") & (frame["date"] < "2025-01-01")
    customer = frame["customer_id"] == "C004217"
    big = (frame["product"] == "Espresso machine") & (frame["quantity"] > 8) & frame["city"].isin(["Lyon", "Marseille"])
    # The model reads the maximum from describe(), which samples this big a frame, then asks for the rows above it.
    sampled_max = frame["price"].iloc[numpy.sort(numpy.random.default_rng(0).choice(len(frame), DESCRIBE_SAMPLE, replace=False))].max()
    threshold = float(f"{sampled_max * 0.995:.3g}")
    priciest = frame.loc[frame["price"].idxmax()]
    cash = (frame["city"] == "Nice") & (frame["payment"] == "cash on delivery") & frame["price"].between(20, 30)
    prefix = frame["customer_id"].str.startswith("C0599")
    counts = frame["status"].value_counts()
    return [
        Question(
            "How many orders from Paris over 100 € are there in orders?",
            [[rows_call(where=[{"column": "city", "op": "==", "value": "Paris"}, {"column": "price", "op": ">", "value": 100}], limit=5)]],
            [count(paris)],
        ),
        Question(
            "Which cities appear in orders, and how many orders each?",
            [[ToolCall("describe_variable", {"name": NAME, "column": "city"})]],
            [f"| {city} | {n} |" for city, n in frame["city"].value_counts().items()],
        ),
        Question(
            "Show me the 3 most recent orders.",
            [[rows_call(mode="tail", limit=3)]],
            [str(order) for order in frame["order_id"].iloc[-3:]],
        ),
        Question(
            "How many orders were cancelled in December 2024?",
            [[rows_call(where=[
                {"column": "status", "op": "==", "value": "cancelled"},
                {"column": "date", "op": ">=", "value": "2024-12-01"},
                {"column": "date", "op": "<", "value": "2025-01-01"},
            ], limit=5)]],
            [count(december)],
        ),
        Question(
            "What did customer C004217 order? Look in orders.",
            [[rows_call(where=[{"column": "customer_id", "op": "==", "value": "C004217"}], limit=20)]],
            [count(customer)] + [str(order) for order in frame.loc[customer, "order_id"].iloc[:3]],
        ),
        Question(
            "Which products does the shop sell, according to orders?",
            [[ToolCall("describe_variable", {"name": NAME, "column": "product"})]],
            [f"| {product} |" for product in PRODUCTS],
        ),
        Question(
            "Find orders of more than 8 espresso machines shipped to Lyon or Marseille.",
            [[rows_call(where=[
                {"column": "product", "op": "==", "value": "Espresso machine"},
                {"column": "quantity", "op": ">", "value": 8},
                {"column": "city", "op": "in", "value": ["Lyon", "Marseille"]},
            ], limit=10)]],
            [count(big)],
        ),
        Question(
            "What is the most expensive order in orders, and who placed it?",
            [
                [ToolCall("describe_variable", {"name": NAME})],
                [rows_call(where=[{"column": "price", "op": ">=", "value": threshold}], limit=20)],
            ],
            [str(priciest["order_id"]), priciest["customer_id"]],
        ),
        Question(
            "What share of orders were returned, and how many are still processing?",
            [[ToolCall("describe_variable", {"name": NAME, "column": "status"})]],
            [f"| returned | {counts['returned']} |", f"| processing | {counts['processing']} |"],
        ),
        Question(
            "Show a few cash-on-delivery orders from Nice priced 20-30 €, and customers whose id starts with C0599.",
            [[
                rows_call(mode="sample", where=[
                    {"column": "city", "op": "==", "value": "Nice"},
                    {"column": "payment", "op": "==", "value": "cash on delivery"},
                    {"column": "price", "op": ">=", "value": 20},
                    {"column": "price", "op": "<=", "value": 30},
                ], limit=5),
                rows_call(
                    where=[{"column": "customer_id", "op": "startswith", "value": "C0599"}], columns=["customer_id", "city"], limit=10
                ),
            ]],
            [count(cash), count(prefix)],
        ),
    ]


def bare_pandas(frame: pandas.DataFrame, call: ToolCall) -> Callable[[], object]:
    """The pandas work ``call`` needs, written directly: what pandas alone takes for the filter or the counts."""
    arguments = call.arguments
    if call.name == "describe_variable":
        column = arguments.get("column")

        def describe() -> object:
            frame.isna().sum()
            sample = numpy.sort(numpy.random.default_rng(0).choice(len(frame), DESCRIBE_SAMPLE, replace=False))
            frame.iloc[sample].describe()
            return frame[column].value_counts(dropna=False) if column else None

        return describe
    tests = {
        "==": lambda s, v: s == v, ">": lambda s, v: s > v, ">=": lambda s, v: s >= v, "<": lambda s, v: s < v,
        "<=": lambda s, v: s <= v, "in": lambda s, v: s.isin(v), "startswith": lambda s, v: s.str.startswith(v, na=False),
    }
    limit, mode = arguments.get("limit", 20), arguments.get("mode", "head")

    def rows() -> object:
        chosen = frame
        if arguments.get("where"):
            mask = numpy.logical_and.reduce([tests[c["op"]](frame[c["column"]], c["value"]).to_numpy() for c in arguments["where"]])
            chosen = frame[mask]
        if mode == "sample":
            return chosen.sample(min(limit, len(chosen)), random_state=0)
        return chosen.tail(limit) if mode == "tail" else chosen.head(limit)

    return rows


def holds(text: str, fact: str) -> bool:
    """Whether ``fact`` is in ``text`` as a whole (``52`` is not in ``52.31`` nor in ``1,052``)."""
    return re.search(rf"(?<![\w.,]){re.escape(fact)}(?![\w.,])", text) is not None


def time_calls(kernel: KernelTools, frame: pandas.DataFrame, question_number: int, calls: list[ToolCall], misses: list[str]) -> None:
    """One line per call: the tool's median milliseconds, and the bare pandas operation's, run alternately."""
    for call in calls:
        tool = functools.partial(kernel.run, call.name, call.arguments_json())
        pandas_ms, tool_ms = paired_medians(bare_pandas(frame, call), tool, repeat=REPEAT, warmup=1)
        if tool_ms <= GOAL_MS:
            verdict = ""
        elif pandas_ms > GOAL_MS:
            verdict = "  over, as pandas alone is"
        else:
            verdict = "  MISSES"
            misses.append(f"q{question_number} {call.name} ({tool_ms:.0f} ms, pandas alone {pandas_ms:.0f} ms)")
        goal = f"goal <= {GOAL_MS:.0f} ms (bare pandas {pandas_ms:.1f} ms){verdict}"
        report(f"q{question_number}:   {call_label(call)[:52]}", f"{tool_ms:.1f} ms", goal)


def request_tokens(request: dict[str, Any]) -> int:
    """Tokens of one request body as the model receives it: its messages and the tool schemas offered."""
    return int(litellm_module().token_counter(model=MODEL, messages=request["messages"], tools=request.get("tools")))


def request_text(requests: list[dict[str, Any]]) -> str:
    return "\n".join(str(message.get("content") or "") for request in requests for message in request["messages"])


def call_label(call: ToolCall) -> str:
    arguments = {key: value for key, value in call.arguments.items() if key != "name"}
    shown = ", ".join(
        f"{key}=" + (" & ".join(f"{c['column']} {c['op']} {c.get('value', '')}".strip() for c in value) if key == "where" else str(value))
        for key, value in arguments.items()
    )
    return f"{call.name}({shown})"


def main() -> None:
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    with tempfile.TemporaryDirectory() as base, ModelServer() as server:
        os.environ["IPYTHONDIR"] = os.path.join(base, "ipython")
        from IPython.core.interactiveshell import InteractiveShell

        shell = InteractiveShell.instance()  # the tools find the kernel's shell through get_ipython()
        start = time.perf_counter()
        frame = orders_frame()
        report(f"build the {ROWS:,}-row frame ({frame.shape[1]} columns)", f"{time.perf_counter() - start:.2f} s")
        shell.push({NAME: frame})
        shell.run_cell(f"{NAME}.shape;", store_history=True)  # a cell run, its output hidden by the semicolon
        client = OblixClient(
            model=MODEL,
            session_manager=SessionManager(os.path.join(base, "sessions")),
            model_options={MODEL: {"api_base": server.url, "supports_tools": True}},
            semantic=False,
        )
        kernel = KernelTools.from_shell(shell, [NAME], count=lambda text: count_tokens(MODEL, text))
        totals = {"tools": [], "summary": []}
        misses = []
        for number, question in enumerate(questions(frame), 1):
            print(f"-- q{number}: {question.prompt}", flush=True)
            variables = summarize_variables(shell.user_ns, question.prompt, named=[NAME])

            def turn(tools: bool, behaviors: list[Behavior], prompt: str = question.prompt, variables: Any = variables) -> tuple[Any, Any]:
                server.reset()
                server.enqueue(*behaviors)
                answer = client.execute_sync(prompt, None, history=False, variables=variables, tools=tools)
                return answer, server.chat_requests()

            scripted = [Behavior(tool_calls=calls) for calls in question.rounds] + [Behavior(reply="Here is what the data shows.")]
            answer, sent = turn(True, scripted)
            assert [call["name"] for call in answer["tools"]] == [call.name for calls in question.rounds for call in calls], answer["tools"]
            failed = [call["result"] for call in answer["tools"] if not call["ok"]]
            assert not failed, failed
            with_tools = sum(request_tokens(request) for request in sent)
            results = "\n".join(call["result"] for call in answer["tools"])
            _, alone = turn(False, [Behavior(reply="A guess from the summary.")])
            assert len(alone) == 1 and "tools" not in alone[0] and variables[0].text in request_text(alone)
            summary_only = request_tokens(alone[0])
            totals["tools"].append(with_tools)
            totals["summary"].append(summary_only)
            found = all(holds(results, fact) for fact in question.facts)
            held = all(holds(request_text(alone), fact) for fact in question.facts)
            schema_tokens = request_tokens({"messages": [], "tools": sent[0]["tools"]}) - request_tokens({"messages": []})
            answered = f"schemas {schema_tokens:,} a request; results hold the answer: {'yes' if found else 'NO'}"
            report(f"q{number}: tokens sent with tools ({len(sent)} requests)", f"{with_tools:,}", answered)
            summarised = "no (a guess)" if not held else "yes"
            report(f"q{number}: tokens sent, frame summary only", f"{summary_only:,}", f"summary holds the answer: {summarised}")
            time_calls(kernel, frame, number, [call for calls in question.rounds for call in calls], misses)
        report("median tokens a question, with tools", f"{statistics.median(totals['tools']):,.0f}")
        report("median tokens a question, summary only (cannot answer)", f"{statistics.median(totals['summary']):,.0f}")
        report("calls over 100 ms where pandas alone is within it", f"{len(misses)}", "; ".join(misses))

        print("-- the same calls, text columns as category", flush=True)
        texts = [column for column in frame.columns if frame[column].dtype == "str"]
        categorical = frame.astype({column: "category" for column in texts})
        shell.push({NAME: categorical})
        kernel = KernelTools.from_shell(shell, [NAME], count=lambda text: count_tokens(MODEL, text))
        category_misses: list[str] = []
        for number, question in enumerate(questions(frame), 1):
            time_calls(kernel, categorical, number, [call for calls in question.rounds for call in calls], category_misses)
        report("calls over 100 ms where pandas alone is within it", f"{len(category_misses)}", "; ".join(category_misses))
        shell.history_manager.end_session()


if __name__ == "__main__":
    main()
