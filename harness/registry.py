"""Registries for methods and tasks, and the loading of plugins that fill them.

Built-in plugins are the files in the repository's ``methods/`` and ``tasks/`` folders. They are loaded by path
under the private module prefix ``_adaptbench_plugins`` rather than installed as top-level packages, so that
generic names such as ``methods`` or ``tasks`` never land in site-packages where they would clash with other
projects. Third-party plugins load the same way from ``--plugins path/to/file.py`` (or an importable module
name) and through the entry-point group ``adaptbench.plugins``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, Sequence

from .errors import UserError
from .vocabulary import ROLES, TRAINS, group_rank

ENTRY_POINT_GROUP = "adaptbench.plugins"
# What the runner can hand a method while it adapts, by keyword, when the method asks for it at registration:
RUN_CONTEXT = {
    "train_data": "the task's training images, a re-iterable of normalised batches (e.g. for a rate search)",
    "measure": "the run's timing settings, a harness.measure.MeasureConfig (e.g. to time candidate models)",
}
_REPO_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_PLUGIN_DIRS = (_REPO_ROOT / "methods", _REPO_ROOT / "tasks")


@dataclass(frozen=True)
class MethodSpec:
    """A registered adaptation method: ``fn(model, compression, **options)`` patches a timm ViT in place.

    ``role`` (one of :data:`harness.vocabulary.ROLES`, or None) and ``order`` (display order in tables and plots,
    which also fixes a method's plot style) travel in every run record as ``method_info``, so the report
    needs no registry. ``context`` names what the runner hands the method besides the model (see
    :data:`RUN_CONTEXT`). ``source`` is the file that defines ``fn``, for messages that name the plugin.
    ``trains`` (one of :data:`harness.vocabulary.TRAINS`) picks the learning rate a task's recipe gives it.
    """

    name: str
    fn: Callable
    description: str
    compresses: bool
    source: str
    role: str | None = None
    order: int | None = None
    context: tuple[str, ...] = ()
    trains: str = "adapters"

    def info(self) -> dict:
        """What a run record says of its method."""
        return {"compresses": self.compresses, "role": self.role, "order": self.order}


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: ``fn(data_root)`` returns a :class:`harness.data.TaskData`; ``source`` is the file that
    defines ``fn``."""

    name: str
    fn: Callable
    description: str
    suite: str
    group: str | None
    source: str
    selectors: tuple[str, ...] = field(default=())


_METHODS: dict[str, MethodSpec] = {}
_TASKS: dict[str, TaskSpec] = {}
_loaded_sources: set[str] = set()


def _first_doc_line(fn: Callable) -> str:
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _defined_in(fn: Callable) -> str:
    """The file that defines ``fn``, which a user can open (plugins load under generated module names); for a
    callable without code of its own (a class instance, a C function), its module's name."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return code.co_filename if code is not None else str(getattr(fn, "__module__", None) or repr(fn))


def _same_definition(old: Callable, new: Callable) -> bool:
    """One definition registered again: the same object, or the same function of the same file executed again
    (a plugin loaded both as a file and as a module, or reloaded), which makes a new object of the same code."""
    if old is new:
        return True
    old_code, new_code = getattr(old, "__code__", None), getattr(new, "__code__", None)
    return (old_code is not None and new_code is not None and old_code.co_filename == new_code.co_filename
            and old.__qualname__ == new.__qualname__)


def _check_free(registry: dict, kind: str, name: str, fn: Callable) -> None:
    """Refuse a second definition of a name: replacing it silently would give its runs the first one's file names
    and config keys."""
    existing = registry.get(name)
    if existing is not None and not _same_definition(existing.fn, fn):
        raise UserError(f"{kind} '{name}' is registered twice ({existing.source} and {_defined_in(fn)}); "
                        f"rename one of them")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # names go into file names, comma lists and A@level selectors


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must be letters, digits, '_', '.' or '-' (it names run files and is "
                         f"written in comma-separated lists)")


def register_method(name: str, *, compresses: bool = False, role: str | None = None, order: int | None = None,
                    context: Sequence[str] = (), trains: str = "adapters", description: str | None = None) -> Callable:
    """Decorator: register ``fn(model, compression=None, **options) -> nn.Module`` as method ``name``.

    ``compresses`` says whether the method accepts a compression level; methods that do not reject one.
    ``role`` says what the method is for in the analysis (:data:`harness.vocabulary.ROLES`: the speed-up
    ``"reference"``, the ``"small-model baseline"`` of the Adverse Compression test); ``order`` places it in
    tables and plots (methods without one follow, by name). ``context`` lists the run context the method is
    handed as keyword arguments (:data:`RUN_CONTEXT`). ``trains`` says what it trains (:data:`TRAINS`:
    ``"adapters"``, the default, or ``"all"`` for full fine-tuning), so a task's recipe can give each its learning
    rate. The description shown by ``--list`` defaults to the first line of the function's docstring.
    """
    _check_name("method", name)
    if trains not in TRAINS:
        raise ValueError(f"trains must be one of {', '.join(map(repr, TRAINS))}, not {trains!r}")
    if isinstance(context, str):
        raise ValueError(f"context takes a tuple of names, such as ({context!r},), not the string {context!r}")
    if role is not None and role not in ROLES:
        raise ValueError(f"method role must be one of {', '.join(map(repr, ROLES))} or None, not {role!r}")
    unknown = [item for item in context if item not in RUN_CONTEXT]
    if unknown:
        raise ValueError(f"unknown run context {', '.join(unknown)}; a method may ask for {', '.join(RUN_CONTEXT)}")

    def decorate(fn: Callable) -> Callable:
        _check_free(_METHODS, "method", name, fn)
        _METHODS[name] = MethodSpec(name, fn, description or _first_doc_line(fn), compresses, _defined_in(fn),
                                    role, order, tuple(context), trains)
        return fn

    return decorate


def register_task(name: str, *, suite: str, group: str | None = None, description: str | None = None) -> Callable:
    """Decorator: register ``fn(data_root: Path | None) -> TaskData`` as task ``name``.

    ``suite`` (e.g. ``offline``, ``vtab``) makes the task selectable as ``--tasks SUITE``; ``group`` (free-form;
    VTAB's are natural, specialized and structured) as ``--tasks SUITE-GROUP`` too, and the report averages
    each group's tasks.
    """

    _check_name("task", name)
    _check_name("suite", suite)
    selectors = (suite,) if group is None else (suite, f"{suite}-{group}")

    def decorate(fn: Callable) -> Callable:
        _check_free(_TASKS, "task", name, fn)
        groups = {selector for spec in _TASKS.values() if spec.name != name for selector in spec.selectors}
        clash = ([name] if name in groups else []) + [s for s in selectors if s in _TASKS and s != name]
        if clash:
            raise ValueError(f"task '{name}' (suite {suite!r}) and the tasks registered before it would share the "
                             f"name {clash[0]!r} for a task and a task group, and --tasks {clash[0]} would pick one "
                             f"silently; rename the task or its suite")
        _TASKS[name] = TaskSpec(name, fn, description or _first_doc_line(fn), suite, group, _defined_in(fn),
                                selectors=selectors)
        return fn

    return decorate


def methods() -> dict[str, MethodSpec]:
    load_plugins()
    return dict(sorted(_METHODS.items()))


def tasks() -> dict[str, TaskSpec]:
    load_plugins()
    return dict(sorted(_TASKS.items()))


def task_selectors() -> dict[str, list[str]]:
    """Names that select several tasks at once (suites and suite-group pairs) and the tasks they select."""
    selected: dict[str, list[str]] = {}
    load_plugins()
    by_group = sorted(_TASKS.values(), key=lambda spec: group_rank(spec.group))  # stable: keeps load order
    for spec in by_group:
        for selector in spec.selectors:
            selected.setdefault(selector, []).append(spec.name)
    return dict(sorted(selected.items()))


def get_method(name: str) -> MethodSpec:
    known = methods()
    if name not in known:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(known)} "
                        f"(add your own with --plugins FILE.py)")
    return known[name]


def get_task(name: str) -> TaskSpec:
    known = tasks()
    if name not in known:
        raise UserError(f"unknown task '{name}'; valid tasks: {', '.join(known)}")
    return known[name]


def expand_tasks(names: Iterable[str]) -> list[str]:
    """Resolve task names and selectors (``offline``, ``vtab-natural``) into task names, keeping order."""
    known, selectors = tasks(), task_selectors()
    expanded: list[str] = []
    for name in names:
        if name in known:
            picked = [name]
        elif name in selectors:
            picked = selectors[name]
        else:
            raise UserError(f"unknown task '{name}'; valid tasks: {', '.join(known)}; "
                            f"valid task groups: {', '.join(selectors)}")
        expanded.extend(task for task in picked if task not in expanded)
    return expanded


def _module_name_for(path: Path, prefix: str) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"_adaptbench_plugins.{prefix}.{path.stem}_{digest}"


def _exec_file(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_plugin(source: str) -> None:
    """Load one plugin: a path to a ``.py`` file or an importable module name. Loading twice is a no-op."""
    path = Path(source).expanduser()
    looks_like_path = source.endswith(".py") or "/" in source or path.exists()
    key = str(path.resolve()) if looks_like_path else source
    if key in _loaded_sources:
        return
    try:
        if looks_like_path:
            if not path.is_file():
                raise UserError(f"plugin file not found: {source}; pass an existing .py file or a module name")
            _exec_file(path.resolve(), _module_name_for(path.resolve(), "external"))
        else:
            importlib.import_module(source)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and source.startswith(exc.name):
            raise UserError(f"plugin module '{source}' cannot be imported; check the name or pass a file path")
        raise UserError(f"plugin '{source}' failed to load: {exc}; install what it needs or leave it out")
    except Exception as exc:  # a plugin's own bug must not look like ours
        raise UserError(f"plugin '{source}' raised {type(exc).__name__}: {exc}; fix the plugin or leave it out")
    _loaded_sources.add(key)


def _load_builtin_dir(folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"built-in plugin folder {folder} is missing; reinstall adaptbench from a full checkout "
                        f"with pip install -e .")
    for path in sorted(folder.glob("*.py")):
        key = str(path.resolve())
        if key not in _loaded_sources and not path.name.startswith("_"):
            _exec_file(path, _module_name_for(path, folder.name))
            _loaded_sources.add(key)


def _load_entry_points() -> None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry-point:{entry_point.value}"
        if key in _loaded_sources:
            continue
        try:
            loaded = entry_point.load()
            if callable(loaded) and not isinstance(loaded, ModuleType):
                loaded()
        except Exception as exc:
            raise UserError(f"plugin entry point '{entry_point.name}' ({entry_point.value}) raised "
                            f"{type(exc).__name__}: {exc}; fix or uninstall that package")
        _loaded_sources.add(key)


def load_plugins(extra: Sequence[str] = ()) -> None:
    """Load the built-in plugin folders, installed entry points and the ``extra`` plugins (paths or modules)."""
    for folder in BUILTIN_PLUGIN_DIRS:
        _load_builtin_dir(folder)
    _load_entry_points()
    for source in extra:
        load_plugin(source)
