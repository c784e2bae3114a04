"""Which namespace names a cell reads, binds, deletes and may mutate, read from its AST.

Why: the agent must inspect only what a cell touched, so that the per-cell cost does not grow
with the namespace. Everything here is pure: source text in, sets of names out. The input is
IPython's transformed cell (`shell.transform_cell`), where magics are calls such as
`get_ipython().run_cell_magic('time', '', body)`; the bodies of code-running magics are
analysed too. When the AST cannot tell (exec, globals(), star imports, %run, ...) the result
says so with `dynamic`, and the caller compares the namespace's key set instead.
"""

from __future__ import annotations

import ast
import dis
import functools
import shlex
import types
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "CellNames",
    "GlobalAccess",
    "called_globals",
    "cell_names",
    "function_global_access",
    "function_globals",
]

# Calls that reach the global namespace by name strings instead of names in the source.
_DYNAMIC_CALLS = {"exec", "eval", "globals", "__import__"}
# Same, but only at module level (inside a function they mean the function's locals).
_DYNAMIC_MODULE_CALLS = {"locals", "vars"}
# Shell attributes that read or write the user namespace behind the AST's back.
_SHELL_NAMESPACE_ATTRS = {
    "user_ns", "user_global_ns", "push", "del_var", "drop_by_id", "run_cell", "run_code",
    "ex", "ev", "magic", "reset", "safe_execfile", "safe_run_module", "run_cell_async",
}

# Magics whose argument (line magic) or body (cell magic) is Python code run in the namespace.
_CODE_MAGICS = {"time", "timeit", "prun", "capture", "debug"}
# Magics whose code runs in a function of its own: its assignments do not reach the namespace.
_LOCAL_CODE_MAGICS = {"timeit"}
# Options that take a value, per code magic, so the code can be found after them.
_MAGIC_VALUE_OPTIONS = {
    "timeit": {"-n", "-r", "-p"}, "prun": {"-D", "-l", "-s", "-T"}, "debug": {"--breakpoint", "-b"},
}
# Magics that change the namespace in ways the AST cannot see.
_NAMESPACE_MAGICS = {
    "run", "reset", "reset_selective", "store", "xdel", "pylab", "load_ext", "reload_ext", "macro",
    "autoreload", "aimport", "recall", "rerun", "paste", "cpaste", "sql",
}
# Magics known not to touch the namespace (anything else is treated as dynamic). `%elastic` is the
# agent's own: a restore or reset through it keeps the recorder's books itself.
_INERT_MAGICS = {
    "elastic",
    "matplotlib", "config", "env", "cd", "pwd", "ls", "pinfo", "pinfo2", "psearch", "who", "whos",
    "who_ls", "history", "hist", "precision", "pdoc", "pdef", "psource", "pfile", "lsmagic", "magic",
    "xmode", "page", "pprint", "alias", "unalias", "bookmark", "dhist", "dirs", "popd", "pushd",
    "colors", "automagic", "autocall", "doctest_mode", "logstart", "logstop", "logon", "logoff",
    "notebook", "save", "sx", "system", "writefile", "file", "html", "javascript", "js", "latex",
    "markdown", "svg", "bash", "sh", "script", "perl", "ruby", "python", "python2", "python3", "pypy",
    "quickref", "time", "timeit", "prun", "capture", "debug", "pip", "conda", "mamba", "load",
    "tb", "killbgscripts", "clear", "less", "more", "man", "mkdir", "rm", "rmdir", "cat", "cp", "mv",
}
# Script magics whose options name variables they assign.
_SCRIPT_MAGICS = {"bash", "sh", "script", "perl", "ruby", "python", "python2", "python3", "pypy"}
_SCRIPT_VAR_OPTIONS = {"--out", "--err", "--proc"}

# Nondeterminism sources, by canonical dotted call name.
_RANDOM_PURE = {"seed", "getstate", "setstate", "Random"}
_NUMPY_RANDOM_CTORS = {
    "default_rng", "RandomState", "Generator", "SeedSequence", "PCG64", "PCG64DXSM", "MT19937",
    "Philox", "SFC64",
}
_NUMPY_RANDOM_PURE = {"seed", "get_state", "set_state", "get_bit_generator", "set_bit_generator"}
_CLOCK_CALLS = {
    "time.time", "time.time_ns", "time.perf_counter", "time.perf_counter_ns", "time.monotonic",
    "time.monotonic_ns", "time.process_time", "time.localtime", "time.ctime", "time.gmtime",
    "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today", "datetime.date.today",
    "pandas.Timestamp.now", "pandas.Timestamp.today", "pandas.Timestamp.utcnow",
}
_OTHER_NONDETERMINISTIC = {"uuid.uuid1", "uuid.uuid4", "os.urandom", "os.getrandom", "random.SystemRandom"}
_TORCH_RANDOM = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
                 "normal", "bernoulli", "multinomial", "poisson"}
# Aliases notebooks use so often that calls through them are recognised without the import.
_CONVENTIONAL_ALIASES = {"np": "numpy", "pd": "pandas", "tf": "tensorflow"}


@dataclass
class CellNames:
    """What a cell's source says about the namespace (see docs/internals.md, "Recording pieces")."""

    loads: set[str] = field(default_factory=set)
    stores: set[str] = field(default_factory=set)
    deletes: set[str] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)
    mutated: set[str] = field(default_factory=set)
    global_decls: set[str] = field(default_factory=set)
    star_imports: list[str] = field(default_factory=list)
    magics: list[str] = field(default_factory=list)
    dynamic: bool = False
    dynamic_reasons: list[str] = field(default_factory=list)
    nondeterministic: list[str] = field(default_factory=list)
    seeds: set[str] = field(default_factory=set)
    syntax_error: bool = False

    @property
    def candidates(self) -> set[str]:
        """Names whose objects the cell may have changed: anything it read, bound or mutated."""
        return self.loads | self.stores | self.mutated | self.calls

    def merge(self, other: CellNames, *, keep_stores: bool = True) -> None:
        self.loads |= other.loads
        if keep_stores:
            self.stores |= other.stores
            self.deletes |= other.deletes
        self.calls |= other.calls
        self.mutated |= other.mutated
        self.global_decls |= other.global_decls
        self.star_imports += other.star_imports
        self.magics += other.magics
        self.dynamic = self.dynamic or other.dynamic
        self.dynamic_reasons += other.dynamic_reasons
        self.nondeterministic += other.nondeterministic
        self.seeds |= other.seeds
        self.syntax_error = self.syntax_error or other.syntax_error

    def flag_dynamic(self, reason: str) -> None:
        self.dynamic = True
        if reason not in self.dynamic_reasons:
            self.dynamic_reasons.append(reason)


def cell_names(code: str, transform: Callable[[str], str] | None = None) -> CellNames:
    """Analyse one transformed cell. `transform` turns raw IPython source (a cell magic's body)
    into Python; by default IPython's TransformerManager, when IPython is importable."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        result = CellNames(syntax_error=True)
        result.flag_dynamic("syntax error")
        return result
    scopes = _Binder.scopes_of(tree)
    visitor = _Resolver(scopes, transform or _default_transform)
    visitor.visit(tree)
    if visitor.only_magic_shell_use:
        visitor.result.loads.discard("get_ipython")
        visitor.result.calls.discard("get_ipython")
    return visitor.result


# ---------------------------------------------------------------------------------------------
# Scopes: which names each function, lambda, class and comprehension binds locally.


class _Scope:
    __slots__ = ("declared_global", "declared_nonlocal", "kind", "local", "parent")

    def __init__(self, kind: str, parent: _Scope | None) -> None:
        self.kind = kind  # "module", "function", "class" or "comprehension"
        self.parent = parent
        self.local: set[str] = set()
        self.declared_global: set[str] = set()
        self.declared_nonlocal: set[str] = set()

    def bind(self, name: str) -> None:
        if name not in self.declared_global and name not in self.declared_nonlocal:
            self.local.add(name)

    def resolves_global(self, name: str) -> bool:
        """Python's rule: the innermost function scope that binds the name owns it; class
        bodies never own names for code nested in them, and code directly in a class body
        reads the global until the body binds the name (`class C: x = x`), so it counts as a
        global read there; declared globals skip to the module."""
        scope: _Scope | None = self
        while scope is not None and scope.kind != "module":
            if name in scope.declared_global:
                return True
            if scope.kind != "class" and (name in scope.local or name in scope.declared_nonlocal):
                return False
            scope = scope.parent
        return True

    def walrus_target(self) -> _Scope:
        scope = self
        while scope.kind == "comprehension" and scope.parent is not None:
            scope = scope.parent
        return scope


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _bound_by_pattern(node: ast.AST) -> list[str]:
    """Names a `match` pattern binds (ast node classes exist only on 3.10+)."""
    names = []
    for sub in ast.walk(node):
        kind = type(sub).__name__
        if kind in ("MatchAs", "MatchStar") and getattr(sub, "name", None):
            names.append(sub.name)
        elif kind == "MatchMapping" and getattr(sub, "rest", None):
            names.append(sub.rest)
    return names


def _pattern_expressions(node: ast.AST) -> list[ast.expr]:
    """What a `match` pattern evaluates: class names, value constants, mapping keys."""
    found: list[ast.expr] = []
    for sub in ast.walk(node):
        kind = type(sub).__name__
        if kind == "MatchValue":
            found.append(sub.value)  # type: ignore[attr-defined]
        elif kind == "MatchClass":
            found.append(sub.cls)  # type: ignore[attr-defined]
        elif kind == "MatchMapping":
            found.extend(sub.keys)  # type: ignore[attr-defined]
    return found


def _import_binding(alias: ast.alias) -> str:
    return alias.asname or alias.name.partition(".")[0]


class _Binder(ast.NodeVisitor):
    """First pass: the local names of every scope, keyed by the node that opens it."""

    def __init__(self) -> None:
        self.scopes: dict[ast.AST, _Scope] = {}
        self.current = _Scope("module", None)

    @classmethod
    def scopes_of(cls, tree: ast.AST) -> dict[ast.AST, _Scope]:
        binder = cls()
        binder.scopes[tree] = binder.current
        binder.visit(tree)
        return binder.scopes

    def _enter(self, node: ast.AST, kind: str) -> _Scope:
        scope = _Scope(kind, self.current)
        self.scopes[node] = scope
        return scope

    def _visit_in(self, scope: _Scope, nodes: list[Any]) -> None:
        outer, self.current = self.current, scope
        for item in nodes:
            self.visit(item)
        self.current = outer

    def _visit_function(self, node: Any) -> None:
        if not isinstance(node, ast.Lambda):
            self.current.bind(node.name)
            for item in node.decorator_list:
                self.visit(item)
            if node.returns is not None:
                self.visit(node.returns)
        for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]:
            self.visit(default)
        scope = self._enter(node, "function")
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                    node.args.vararg, node.args.kwarg]:
            if arg is not None:
                scope.bind(arg.arg)
                if arg.annotation is not None:
                    self.visit(arg.annotation)
        self._predeclare(scope, node.body if isinstance(node.body, list) else [node.body])
        self._visit_in(scope, node.body if isinstance(node.body, list) else [node.body])

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.current.bind(node.name)
        for item in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(item)
        scope = self._enter(node, "class")
        self._predeclare(scope, node.body)
        self._visit_in(scope, node.body)

    def _visit_comprehension(self, node: Any) -> None:
        generators = node.generators
        self.visit(generators[0].iter)
        scope = self._enter(node, "comprehension")
        outer, self.current = self.current, scope
        for index, gen in enumerate(generators):
            if index:
                self.visit(gen.iter)
            self.visit(gen.target)
            for cond in gen.ifs:
                self.visit(cond)
        for part in ("elt", "key", "value"):
            if getattr(node, part, None) is not None:
                self.visit(getattr(node, part))
        self.current = outer

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    @staticmethod
    def _predeclare(scope: _Scope, body: list[Any]) -> None:
        """global/nonlocal apply to the whole scope, wherever they appear in it."""
        stack = list(body)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Global):
                scope.declared_global.update(node.names)
            elif isinstance(node, ast.Nonlocal):
                scope.declared_nonlocal.update(node.names)
            elif not isinstance(node, (*_FUNCTIONS, ast.ClassDef, *_COMPREHENSIONS)):
                stack.extend(ast.iter_child_nodes(node))

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.current.bind(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.current.walrus_target().bind(node.target.id)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.current.bind(_import_binding(alias))

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.current.bind(node.name)
        self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        if type(node).__name__ == "match_case":
            for name in _bound_by_pattern(node.pattern):  # type: ignore[attr-defined]
                self.current.bind(name)
        super().generic_visit(node)


# ---------------------------------------------------------------------------------------------
# Second pass: resolve every name to a scope, in evaluation order, and collect the facts.


def _base_name(node: ast.AST) -> str | None:
    """`x` for `x`, `x.a.b`, `x[0].c`, `x.f(1).g`: the variable an access chain starts from."""
    while True:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            return None


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _is_get_ipython_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get_ipython"


def _string_args(call: ast.Call) -> list[str] | None:
    if all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args):
        return [a.value for a in call.args]  # type: ignore[attr-defined]
    return None


class _Resolver(ast.NodeVisitor):
    def __init__(self, scopes: dict[ast.AST, _Scope], transform: Callable[[str], str] | None) -> None:
        self.scopes = scopes
        self.transform = transform
        self.result = CellNames()
        self.scope: _Scope = next(iter(scopes.values()))
        self.deferred = 0  # > 0 inside function and lambda bodies: run later, maybe never
        self.bound: set[str] = set()  # module names certainly bound so far by this cell
        # Generators certainly seeded so far by this cell (outside function bodies): a draw after
        # the seed gives the same values on a re-run.
        self.seeded: set[str] = set()
        self.aliases: dict[str, str] = dict(_CONVENTIONAL_ALIASES)
        self.only_magic_shell_use = True

    # -- names ------------------------------------------------------------------------------

    def _load(self, name: str) -> None:
        if not self.scope.resolves_global(name):
            return
        if self.deferred or name not in self.bound:
            self.result.loads.add(name)

    def _store(self, name: str, *, definite: bool = True) -> None:
        scope = self.scope.walrus_target() if not definite else self.scope
        if scope.kind == "module":
            self.result.stores.add(name)
            if definite:
                self.bound.add(name)
        elif name in scope.declared_global:
            self.result.global_decls.add(name)

    def _delete(self, name: str) -> None:
        if self.scope.kind == "module":
            self.result.deletes.add(name)
            self.bound.discard(name)
        elif name in self.scope.declared_global:
            self.result.global_decls.add(name)

    def _mutate(self, node: ast.AST) -> None:
        name = _base_name(node)
        if name is not None and self.scope.resolves_global(name):
            self.result.mutated.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        elif isinstance(node.ctx, ast.Store):
            self._store(node.id)
        else:
            self._delete(node.id)

    def _target(self, node: ast.AST) -> None:
        """An assignment target: names are bound, attribute/subscript chains mutate their base."""
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            self._mutate(node)
        self.visit(node)

    # -- statements in evaluation order -----------------------------------------------------

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._target(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.annotation)
        if node.value is not None or not isinstance(node.target, ast.Name):
            self._target(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
        else:
            self._mutate(node.target)
            self.visit(node.target)
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._store(node.target.id)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._target(target)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            bound = _import_binding(alias)
            self._store(bound)
            self.aliases[bound] = alias.name if alias.asname else bound

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        for alias in node.names:
            if alias.name == "*":
                self.result.star_imports.append(module)
                self.result.flag_dynamic(f"from {module} import *")
                continue
            self._store(_import_binding(alias))
            self.aliases[_import_binding(alias)] = f"{module}.{alias.name}"

    def _branch(self, statements: list[ast.stmt], start: set[str]) -> set[str]:
        saved, self.bound = self.bound, set(start)
        for statement in statements:
            self.visit(statement)
        branch_bound, self.bound = self.bound, saved
        return branch_bound

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        start = set(self.bound)
        self.bound = self._branch(node.body, start) & self._branch(node.orelse, start)

    def _visit_loop(self, node: Any) -> None:
        if isinstance(node, ast.While):
            self.visit(node.test)
            start = set(self.bound)
            self._branch(node.body, start)
        else:
            self.visit(node.iter)
            start = set(self.bound)
            saved, self.bound = self.bound, set(start)
            self._target(node.target)
            for statement in node.body:
                self.visit(statement)
            self.bound = saved
        self._branch(node.orelse, start)
        self.bound = start

    visit_For = visit_AsyncFor = visit_While = _visit_loop

    def visit_Try(self, node: Any) -> None:
        start = set(self.bound)
        after = self._branch([*node.body, *node.orelse], start)
        for handler in node.handlers:
            after &= self._branch([handler], start)
        self.bound = after
        for statement in node.finalbody:
            self.visit(statement)

    visit_TryStar = visit_Try

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._store(node.name)
        for statement in node.body:
            self.visit(statement)

    def _visit_with(self, node: Any) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._target(item.optional_vars)
        for statement in node.body:
            self.visit(statement)

    visit_With = visit_AsyncWith = _visit_with

    def generic_visit(self, node: ast.AST) -> None:
        if type(node).__name__ == "Match":
            self.visit(node.subject)  # type: ignore[attr-defined]
            start = set(self.bound)
            for case in node.cases:  # type: ignore[attr-defined]
                for expression in _pattern_expressions(case.pattern):
                    self.visit(expression)
                for name in _bound_by_pattern(case.pattern):
                    self._store(name, definite=False)
                self._branch([*([case.guard] if case.guard else []), *case.body], start)
            self.bound = start
            return
        super().generic_visit(node)

    # -- scopes -------------------------------------------------------------------------------

    def _visit_function(self, node: Any) -> None:
        is_lambda = isinstance(node, ast.Lambda)
        if not is_lambda:
            for decorator in node.decorator_list:
                self.visit(decorator)
                name = _base_name(decorator)
                if name is not None and self.scope.resolves_global(name):
                    self.result.calls.add(name)
            if node.returns is not None:
                self.visit(node.returns)
        for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]:
            self.visit(default)
        outer, self.scope = self.scope, self.scopes[node]
        self.deferred += 1
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                    node.args.vararg, node.args.kwarg]:
            if arg is not None and arg.annotation is not None:
                self.visit(arg.annotation)
        for statement in node.body if not is_lambda else [node.body]:
            self.visit(statement)
        self.deferred -= 1
        self.scope = outer
        if not is_lambda:
            self._store(node.name)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for item in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(item)
        outer, self.scope = self.scope, self.scopes[node]
        for statement in node.body:
            self.visit(statement)
        self.scope = outer
        self._store(node.name)

    def _visit_comprehension(self, node: Any) -> None:
        generators = node.generators
        self.visit(generators[0].iter)
        outer, self.scope = self.scope, self.scopes[node]
        for index, gen in enumerate(generators):
            if index:
                self.visit(gen.iter)
            self._target(gen.target)
            for cond in gen.ifs:
                self.visit(cond)
        for part in ("key", "value", "elt"):
            if getattr(node, part, None) is not None:
                self.visit(getattr(node, part))
        self.scope = outer

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._store(node.target.id, definite=False)

    def visit_Global(self, node: ast.Global) -> None:
        if self.scope.kind != "module":
            self.result.global_decls.update(node.names)

    # -- expressions that say more than their names ----------------------------------------

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.slice, ast.Constant) and node.slice.value == "__main__":
            self.result.flag_dynamic("sys.modules['__main__']")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_get_ipython_call(node.value):
            if node.attr in _SHELL_NAMESPACE_ATTRS:
                self.result.flag_dynamic(f"get_ipython().{node.attr}")
            if node.attr not in ("run_line_magic", "run_cell_magic", "system", "getoutput"):
                self.only_magic_shell_use = False
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        shell_call = isinstance(func, ast.Attribute) and _is_get_ipython_call(func.value)
        if shell_call and func.attr in ("run_line_magic", "run_cell_magic"):
            self._visit_magic(node, cell=func.attr == "run_cell_magic")
        if isinstance(func, ast.Name):
            if self.scope.resolves_global(func.id):
                self.result.calls.add(func.id)
                self._check_dynamic_builtin(func.id, node)
        elif isinstance(func, ast.Attribute) and not shell_call:
            receiver = _base_name(func.value)
            if receiver is not None and self.scope.resolves_global(receiver):
                self.result.mutated.add(receiver)
                self.result.calls.add(receiver)
        if isinstance(func, ast.Name) and func.id in ("setattr", "delattr") and node.args:
            self._mutate(node.args[0])
        self._check_nondeterminism(node)
        self.generic_visit(node)

    def _check_dynamic_builtin(self, name: str, node: ast.Call) -> None:
        at_module = self.scope.kind == "module" or (self.scope.kind == "comprehension" and not self.deferred)
        if name in _DYNAMIC_CALLS or (name in _DYNAMIC_MODULE_CALLS and not node.args and at_module):
            self.result.flag_dynamic(f"{name}()")

    def _canonical(self, dotted: str) -> str:
        head, dot, rest = dotted.partition(".")
        if head in self.aliases and self.scope.resolves_global(head):
            return self.aliases[head] + dot + rest
        return dotted

    def _check_nondeterminism(self, node: ast.Call) -> None:
        dotted = _dotted(node.func)
        if dotted is None:
            return
        name = self._canonical(dotted)
        module, _, leaf = name.rpartition(".")
        has_args = bool(node.args or node.keywords)
        reason = None
        if module == "random":
            if leaf == "seed":
                reason = self._seed("random", has_args)
            elif leaf == "Random":
                reason = None if has_args else "random.Random() without a seed"
            elif leaf not in _RANDOM_PURE:
                reason = self._draw("random", f"random.{leaf}()")
        elif module in ("numpy.random", "numpy.random.mtrand"):
            if leaf == "seed":
                reason = self._seed("numpy.random", has_args)
            elif leaf in _NUMPY_RANDOM_CTORS:
                reason = None if has_args else f"numpy.random.{leaf}() without a seed"
            elif leaf not in _NUMPY_RANDOM_PURE:
                reason = self._draw("numpy.random", f"numpy.random.{leaf}()")
        elif module == "torch":
            if leaf == "manual_seed":
                reason = self._seed("torch", has_args)
            elif leaf in _TORCH_RANDOM:
                reason = self._draw("torch", f"torch.{leaf}()")
        elif name in _CLOCK_CALLS or name in _OTHER_NONDETERMINISTIC or module == "secrets":
            reason = f"{name}()"
        elif name == "hash":
            reason = "hash() (str hashes differ per process)"
        if reason is not None and reason not in self.result.nondeterministic:
            self.result.nondeterministic.append(reason)

    def _seed(self, generator: str, has_args: bool) -> str | None:
        if has_args:
            self.result.seeds.add(generator)
            if not self.deferred:
                self.seeded.add(generator)
            return None
        return f"{generator}.seed() without a value"

    def _draw(self, generator: str, reason: str) -> str | None:
        """A draw from a global generator: nondeterministic unless this cell seeded it before."""
        return None if generator in self.seeded and not self.deferred else reason

    # -- magics --------------------------------------------------------------------------------

    def _visit_magic(self, node: ast.Call, *, cell: bool) -> None:
        args = _string_args(node)
        if not args:
            self.result.flag_dynamic("magic with a computed name")
            return
        name = args[0]
        line = args[1] if len(args) > 1 else ""
        body = args[2] if cell and len(args) > 2 else None
        self.result.magics.append(("%%" if cell else "%") + name)
        if name in _NAMESPACE_MAGICS or name not in _INERT_MAGICS:
            self.result.flag_dynamic(f"%{name}")
        if name in _SCRIPT_MAGICS and cell:
            self._script_variables(line)
        if name not in _CODE_MAGICS:
            return
        if name == "capture" and cell:
            for word in _split(line):
                if not word.startswith("-"):
                    self._store(word)
        code = body if cell else _strip_options(line, _MAGIC_VALUE_OPTIONS.get(name, set()))
        if cell and name == "timeit" and line.strip():
            self._analyse_nested(_strip_options(line, _MAGIC_VALUE_OPTIONS["timeit"]), name, raw=False)
        if code:
            self._analyse_nested(code, name, raw=cell)

    def _analyse_nested(self, code: str, magic: str, *, raw: bool) -> None:
        if raw and self.transform is not None:
            code = self.transform(code)
        nested = cell_names(code, self.transform)
        if nested.syntax_error:
            self.result.flag_dynamic(f"%{magic} code that does not parse")
            return
        nested.loads -= self.bound
        self.result.merge(nested, keep_stores=magic not in _LOCAL_CODE_MAGICS)
        if magic not in _LOCAL_CODE_MAGICS:
            self.bound |= nested.stores - nested.deletes

    def _script_variables(self, line: str) -> None:
        words = _split(line)
        for option, value in zip(words, words[1:]):
            if option in _SCRIPT_VAR_OPTIONS:
                self._store(value)


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def _strip_options(line: str, value_options: set[str]) -> str:
    """`-n 3 -r 2 f(x)` -> `f(x)`: a magic's leading options, so its code can be parsed."""
    rest = line.lstrip()
    while rest.startswith("-"):
        option, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if option in value_options:
            _, _, rest = rest.partition(" ")
            rest = rest.lstrip()
    return rest


@functools.lru_cache(maxsize=1)
def _transformer() -> Callable[[str], str] | None:
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return None
    return TransformerManager().transform_cell


def _default_transform(code: str) -> str:
    transform = _transformer()
    return transform(code) if transform is not None else code


# ---------------------------------------------------------------------------------------------
# Functions defined in the notebook: which globals their code uses, from the bytecode.


@dataclass(frozen=True)
class GlobalAccess:
    """Global names code reads, assigns (`global x; x = ...`) and deletes."""

    loads: frozenset[str] = frozenset()
    stores: frozenset[str] = frozenset()
    deletes: frozenset[str] = frozenset()
    dynamic: bool = False

    def __or__(self, other: GlobalAccess) -> GlobalAccess:
        return GlobalAccess(self.loads | other.loads, self.stores | other.stores,
                            self.deletes | other.deletes, self.dynamic or other.dynamic)

    @property
    def names(self) -> frozenset[str]:
        return self.loads | self.stores | self.deletes


_LOAD_OPS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"}


@functools.lru_cache(maxsize=4096)
def _code_access(code: types.CodeType) -> GlobalAccess:
    """Global names used by a code object and the code objects nested in it. Bytecode rather
    than `co_names`, which also lists every attribute name (`df.values` is not a global)."""
    loads, stores, deletes = set(), set(), set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in _LOAD_OPS:
            loads.add(instruction.argval)
        elif instruction.opname == "STORE_GLOBAL":
            stores.add(instruction.argval)
        elif instruction.opname == "DELETE_GLOBAL":
            deletes.add(instruction.argval)
    access = GlobalAccess(frozenset(loads), frozenset(stores), frozenset(deletes),
                          bool(loads & (_DYNAMIC_CALLS | {"vars"})))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            access = access | _code_access(const)
    return access


#: Containers up to this size are searched for the functions they hold (`handlers[k]()`).
HELD_FUNCTIONS_MAX_ITEMS = 256


def _held_functions(obj: Any, module: str | None) -> list[types.FunctionType]:
    """Functions held one level down, in a small container or an instance's attributes.

    A cell calling `handlers['save']()` or `model.callback()` runs a notebook function that no
    name in the cell refers to; what that function touches must still be checked.
    """
    if isinstance(obj, dict):
        items: Any = obj.values() if len(obj) <= HELD_FUNCTIONS_MAX_ITEMS else ()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = obj if len(obj) <= HELD_FUNCTIONS_MAX_ITEMS else ()
    else:
        attributes = getattr(obj, "__dict__", None)
        if not isinstance(attributes, dict) or isinstance(obj, (type, types.ModuleType)):
            return []
        items = list(attributes.values())[:HELD_FUNCTIONS_MAX_ITEMS]
    return [f for item in items if callable(item) for f in _own_functions(item, module)]


def _functions_of(obj: Any, module: str | None = None) -> list[types.FunctionType]:
    """`_own_functions`, and with `module` also the notebook functions that `obj` holds."""
    functions = _own_functions(obj, module)
    if module is not None:
        functions += _held_functions(obj, module)
    return functions


def _own_functions(obj: Any, module: str | None = None) -> list[types.FunctionType]:
    """The Python functions behind a callable: itself, a method's function, a partial's
    function, or a class's (or an instance's class's) methods; with `module`, only the methods
    of classes defined there (a DataFrame's hundreds of methods are not the notebook's)."""
    for _ in range(8):
        if isinstance(obj, (types.MethodType, staticmethod, classmethod)):
            obj = obj.__func__
        elif isinstance(obj, functools.partial):
            obj = obj.func
        else:
            break
    if isinstance(obj, types.FunctionType):
        return [obj]
    cls = obj if isinstance(obj, type) else type(obj)
    if cls.__module__ == "builtins":
        return []
    functions = []
    for klass in cls.__mro__[:-1]:
        if module is not None and getattr(klass, "__module__", None) != module:
            continue
        for member in vars(klass).values():
            if isinstance(member, property):
                functions.extend(f for f in (member.fget, member.fset, member.fdel) if f is not None)
            elif isinstance(member, (types.FunctionType, staticmethod, classmethod)):
                functions.extend(_functions_of(member))
    return functions


def function_global_access(func: Any) -> GlobalAccess:
    """Global names a function (method, partial, class) uses, nested code included."""
    access = GlobalAccess()
    for function in _functions_of(func):
        access = access | _code_access(function.__code__)
    return access


def function_globals(func: Any) -> set[str]:
    return set(function_global_access(func).names)


def called_globals(names: set[str], namespace: dict[str, Any]) -> GlobalAccess:
    """What calling the notebook's own functions among `names` may touch, transitively:
    only functions whose globals are `namespace` count (library code cannot see it)."""
    access = GlobalAccess()
    module = namespace.get("__name__", "__main__")
    seen: set[str] = set()
    pending = [n for n in names if n in namespace]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for function in _functions_of(namespace[name], module):
            if function.__globals__ is not namespace:
                continue
            found = _code_access(function.__code__)
            access = access | found
            pending.extend(n for n in found.loads if n in namespace and n not in seen)
    return access
