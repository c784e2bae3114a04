"""The AST analysis over realistic cells, transformed by IPython's own TransformerManager."""

from __future__ import annotations

import sys
import textwrap

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from elastic_proxy.inner_agent.analysis import (
    CellNames,
    called_globals,
    cell_names,
    function_global_access,
    function_globals,
)

_transform = TransformerManager().transform_cell


def names(cell: str) -> CellNames:
    return cell_names(_transform(textwrap.dedent(cell)), transform=_transform)


# -- reads and writes, in evaluation order ----------------------------------------------------


def test_reads_before_writes_and_rebinding():
    result = names("""
        x = x + 1
        y = 2
        z = y * w
    """)
    assert result.loads == {"x", "w"}
    assert result.stores == {"x", "y", "z"}
    assert not result.dynamic


def test_conditional_binding_still_reads_the_old_value():
    result = names("""
        if flag:
            y = 1
        print(y)
    """)
    assert {"flag", "y", "print"} <= result.loads


def test_binding_on_every_branch_is_not_a_read():
    result = names("""
        if flag:
            y = 1
        else:
            y = 2
        try:
            import fancyjson as js
        except ImportError:
            import json as js
        print(y, js)
    """)
    assert "y" not in result.loads
    assert "js" not in result.loads
    assert {"y", "js"} <= result.stores


def test_loop_body_may_not_run():
    result = names("""
        for i in items:
            t = i
            u = t
        print(t, i)
    """)
    assert {"items", "t", "i"} <= result.loads
    assert {"i", "t", "u"} <= result.stores


def test_augmented_assignment_reads_and_writes():
    result = names("total += amount\n")
    assert result.loads == {"total", "amount"}
    assert result.stores == {"total"}


def test_annotation_without_value_binds_nothing():
    result = names("n: int\nm: int = 3\n")
    assert result.stores == {"m"}
    assert "int" in result.loads


def test_with_and_except_names():
    result = names("""
        with open(path) as fh:
            data = fh.read()
        try:
            risky()
        except ValueError as err:
            message = str(err)
        print(data)
    """)
    assert {"fh", "data", "err", "message"} <= result.stores
    assert "data" not in result.loads
    assert {"path", "open", "risky"} <= result.loads


def test_imports_bind_their_top_names():
    result = names("""
        import numpy as np
        import os.path
        from collections import OrderedDict as OD, deque
    """)
    assert result.stores == {"np", "os", "OD", "deque"}
    assert not result.loads


def test_deletes():
    result = names("del a, b[0]\n")
    assert result.deletes == {"a"}
    assert result.mutated == {"b"}


# -- scopes -------------------------------------------------------------------------------------


def test_function_bodies_read_globals_not_their_locals():
    result = names("""
        def scale(values, factor=default_factor):
            offset = base
            return [v * factor + offset + k for v in values]
        scaled = scale(data)
    """)
    assert result.loads == {"default_factor", "base", "k", "data"}
    assert {"scale", "scaled"} <= result.stores
    assert "scale" in result.calls


def test_closures_and_nonlocal_stay_local():
    result = names("""
        def counter():
            count = 0
            def bump():
                nonlocal count
                count += step
                return count
            return bump
    """)
    assert result.loads == {"step"}
    assert result.stores == {"counter"}


def test_global_declarations_in_functions():
    result = names("""
        def setup():
            global config, cache
            config = load()
            del cache
    """)
    assert result.global_decls == {"config", "cache"}
    assert result.stores == {"setup"}
    assert result.loads == {"load"}


def test_class_bodies():
    result = names("""
        class Model(Base):
            size = 3
            scaled = size * factor
            def method(self):
                return size
    """)
    assert result.loads == {"Base", "factor", "size"}  # `size` in the method is the global one
    assert result.stores == {"Model"}
    assert names("class C:\n    x = x + 1\n").loads == {"x"}  # the body reads the global first


def test_comprehensions_and_walrus():
    result = names("""
        squares = [i * k for i in items if i > limit]
        found = [last := j for j in other]
        pairs = {a: b for a, b in table.items()}
    """)
    assert result.loads == {"k", "items", "limit", "other", "table"}
    assert result.stores == {"squares", "found", "last", "pairs"}


def test_lambda_default_is_evaluated_now():
    result = names("f = lambda x, y=default: x + y + outer\n")
    assert result.loads == {"default", "outer"}


# -- mutation candidates and calls -------------------------------------------------------------


def test_mutation_targets():
    result = names("""
        b.append(1)
        c[0] = 2
        d.e.f = 3
        g[1:2] += [4]
        h.attr += 1
        setattr(s, "name", 1)
        m.inner[0].items.clear()
    """)
    assert {"b", "c", "d", "g", "h", "s", "m"} <= result.mutated
    assert {"b", "m", "setattr"} <= result.calls
    assert {"b", "c", "d", "g", "h", "s", "m"} <= result.candidates


def test_decorators_are_calls():
    result = names("""
        @memoise
        def f():
            return 1
    """)
    assert "memoise" in result.calls


# -- dynamic namespace access ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    [
        "exec('a = 1')\n",
        "value = eval('a + 1')\n",
        "globals()['a'] = 1\n",
        "names = vars()\n",
        "snapshot = locals()\n",
        "from os.path import *\n",
        "get_ipython().user_ns['a'] = 1\n",
        "import sys\nsys.modules['__main__'].a = 1\n",
        "%run helper.py\n",
        "%reset -f\n",
        "%store -r data\n",
        "%some_unknown_magic arg\n",
        "def f():\n    exec('a = 1')\n",
    ],
)
def test_dynamic_access_is_flagged(cell):
    result = names(cell)
    assert result.dynamic
    assert result.dynamic_reasons


@pytest.mark.parametrize(
    "cell",
    [
        "attrs = vars(obj)\n",
        "def f():\n    return locals()\n",
        "%matplotlib inline\n",
        "files = !ls\n",
        "!echo hi\n",
        "x?\n",
    ],
)
def test_ordinary_cells_are_not_dynamic(cell):
    assert not names(cell).dynamic


def test_star_import_is_named():
    assert names("from math import *\n").star_imports == ["math"]


def test_shell_escape_binds_its_target():
    result = names("files = !ls -la\n")
    assert result.stores == {"files"}
    assert "get_ipython" not in result.loads | result.calls | result.mutated


# -- magics ------------------------------------------------------------------------------------------


def test_time_cell_magic_body_is_analysed():
    result = names("""
        %%time
        model = fit(data)
        score = model.score(test)
    """)
    assert result.stores == {"model", "score"}
    assert result.loads == {"fit", "data", "test"}
    assert result.magics == ["%%time"]
    assert not result.dynamic


def test_capture_binds_its_variable_and_the_body():
    result = names("""
        %%capture output --no-stderr
        result = compute(x)
    """)
    assert result.stores == {"output", "result"}
    assert {"compute", "x"} <= result.loads


def test_timeit_body_reads_but_does_not_bind():
    result = names("""
        %%timeit -n 3 prepare(x)
        tmp = work(x)
        buffer.append(tmp)
    """)
    assert not result.stores
    assert {"prepare", "work", "x", "buffer"} <= result.loads
    assert "buffer" in result.mutated


def test_line_magics_with_code():
    assert names("%time y = f(x)\n").stores == {"y"}
    result = names("%timeit -n 3 -r 2 g(x)\n")
    assert {"g", "x"} <= result.loads
    assert not result.stores


def test_nested_magics_in_a_captured_body():
    result = names("""
        %%capture
        %time a = slow(b)
    """)
    assert result.stores == {"a"}
    assert {"slow", "b"} <= result.loads


def test_script_magic_output_variables():
    result = names("""
        %%bash --out listing --err errors
        ls
    """)
    assert {"listing", "errors"} <= result.stores


def test_broken_magic_body_is_dynamic_not_an_error():
    result = names("%%time\ndef broken(:\n")
    assert result.dynamic
    assert not result.syntax_error


def test_syntax_error_never_raises():
    result = cell_names("def f(:\n")
    assert result.syntax_error
    assert result.dynamic
    assert cell_names("x = '\0'").syntax_error  # a null byte: ValueError or SyntaxError, by version


# -- nondeterminism --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("import random\nx = random.random()\n", "random.random()"),
        ("import numpy as np\nx = np.random.rand(3)\n", "numpy.random.rand()"),
        ("x = np.random.normal(size=3)\n", "numpy.random.normal()"),
        ("import numpy.random as npr\nx = npr.randint(3)\n", "numpy.random.randint()"),
        ("rng = np.random.default_rng()\n", "numpy.random.default_rng() without a seed"),
        ("import time\nt0 = time.time()\n", "time.time()"),
        ("from datetime import datetime\nnow = datetime.now()\n", "datetime.datetime.now()"),
        ("import uuid\nkey = uuid.uuid4()\n", "uuid.uuid4()"),
        ("from uuid import uuid4\nkey = uuid4()\n", "uuid.uuid4()"),
        ("import os\nsalt = os.urandom(8)\n", "os.urandom()"),
        ("import secrets\ntoken = secrets.token_hex()\n", "secrets.token_hex()"),
        ("random.seed()\n", "random.seed() without a value"),
    ],
)
def test_nondeterministic_calls(cell, expected):
    assert expected in names(cell).nondeterministic


def test_seeded_generators_are_not_nondeterministic():
    result = names("""
        import random
        import numpy as np
        random.seed(0)
        np.random.seed(1)
        rng = np.random.default_rng(42)
        x = rng.normal(size=3)
        y = random.Random(3)
    """)
    assert result.nondeterministic == []
    assert result.seeds == {"random", "numpy.random"}


@pytest.mark.parametrize("cell, reasons", [
    ("random.seed(1)\nx = random.random()\n", []),
    ("np.random.seed(0)\na = np.random.rand(5)\n", []),
    ("torch.manual_seed(0)\nt = torch.rand(3)\n", []),
    # a draw before the seed, from another generator, or in a function that may run before it, is not reproduced
    ("x = random.random()\nrandom.seed(1)\n", ["random.random()"]),
    ("random.seed(1)\na = np.random.rand(5)\n", ["numpy.random.rand()"]),
    ("def f():\n    return random.random()\nrandom.seed(1)\nx = f()\n", ["random.random()"]),
    ("def reset():\n    random.seed(1)\nx = random.random()\n", ["random.random()"]),
])
def test_a_draw_after_the_cells_own_seed_is_reproducible(cell, reasons):
    result = names("import random\nimport numpy as np\nimport torch\n" + cell)
    assert result.nondeterministic == reasons


# -- match statements (3.10+) ----------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 10), reason="match statements need Python 3.10")
def test_match_patterns_bind():
    result = names("""
        match command:
            case {"go": target, **rest}:
                pass
            case [first, *others]:
                pass
            case Point(x=px) as point:
                pass
    """)
    assert {"target", "rest", "first", "others", "px", "point"} <= result.stores
    assert {"command", "Point"} <= result.loads


# -- functions defined in the notebook -------------------------------------------------------------


def _define(source: str) -> dict:
    namespace: dict = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), namespace)
    return namespace


def test_function_globals_from_bytecode():
    ns = _define("""
        import json
        def f(df):
            global counter
            counter = offset + 1
            rows = [r for r in df.values if r > threshold]
            return json.dumps(rows)
    """)
    access = function_global_access(ns["f"])
    assert access.loads == {"offset", "threshold", "json"}
    assert access.stores == {"counter"}
    assert "values" not in function_globals(ns["f"])  # an attribute, not a global
    assert not access.dynamic


def test_function_globals_of_methods_classes_and_partials():
    ns = _define("""
        import functools
        class Model:
            def fit(self):
                return training_data
            @property
            def size(self):
                return default_size
            @staticmethod
            def helper():
                return registry
        def tool(a, b):
            return a + b + bias
        bound = Model().fit
        part = functools.partial(tool, 1)
    """)
    assert function_globals(ns["Model"]) == {"training_data", "default_size", "registry"}
    assert function_globals(ns["bound"]) == {"training_data"}
    assert function_globals(ns["part"]) == {"bias"}
    assert function_globals(len) == set()


def test_called_globals_follow_notebook_functions_only():
    ns = _define("""
        import json
        def outer():
            return inner() + json.dumps(config)
        def inner():
            global state
            state = data
            return 1
        def sneaky():
            return globals()
        class Loader(json.JSONDecoder):
            def load(self):
                return source_path
        loader = Loader()
    """)
    access = called_globals({"outer"}, ns)
    assert {"inner", "json", "config", "data"} <= access.loads
    assert access.stores == {"state"}
    assert not access.dynamic
    assert called_globals({"sneaky"}, ns).dynamic
    assert called_globals({"json", "missing"}, ns).names == frozenset()
    assert called_globals({"loader"}, ns).loads == {"source_path"}  # not JSONDecoder's own globals
