"""What plugin code may not do inside a sandbox: an import allowlist and an audit hook.

The hook is installed once per sub-interpreter after the sandbox runtime has set itself up, and
stays for the interpreter's life (audit hooks cannot be removed). It refuses processes, sockets,
ctypes, new interpreters, new threads, signals and any file access other than reading the
standard library and the plugin's own directory. It is a hardening layer, not a security
boundary: see docs/plugin-sandbox.md.
"""

from __future__ import annotations

import builtins
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable
from typing import Any

ALLOWED_IMPORTS = frozenset(
    {
        "posthog_plugin",
        "asyncio",
        "base64",
        "binascii",
        "bisect",
        "calendar",
        "collections",
        "copy",
        "csv",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "fractions",
        "functools",
        "gzip",
        "hashlib",
        "heapq",
        "hmac",
        "html",
        "io",
        "ipaddress",
        "itertools",
        "json",
        "math",
        "operator",
        "random",
        "re",
        "statistics",
        "string",
        "struct",
        "textwrap",
        "time",
        "typing",
        "unicodedata",
        "urllib",
        "urllib.parse",
        "uuid",
        "zlib",
        "zoneinfo",
        "__future__",
    }
)

# Modules whose loading the hook refuses, whoever asks (plugin code can reach the import
# machinery through stdlib internals such as `typing.sys.modules`, so the allowlist alone
# is not enough).
FORBIDDEN_MODULES = frozenset(
    {
        "ctypes",
        "_ctypes",
        "subprocess",
        "_posixsubprocess",
        "socket",
        "_socket",
        "ssl",
        "_ssl",
        "mmap",
        "multiprocessing",
        "_multiprocessing",
        "_interpreters",
        "_xxsubinterpreters",
        "_interpqueues",
        "_xxinterpqueues",
        "_interpchannels",
        "_xxinterpchannels",
        "concurrent",
        "pty",
        "fcntl",
        "termios",
        "resource",
        "signal",
        "_signal",
        "shutil",
        "tempfile",
        "webbrowser",
        "http",
        "urllib.request",
        "ftplib",
        "smtplib",
        "telnetlib",
        "selectors",
        # re-creating these would give back what disarm_process_functions() replaced
        "posix",
        "_thread",
        "faulthandler",
        "_testcapi",
        "_testinternalcapi",
        "_testmultiphase",
        "_testsinglephase",
        "_testbuffer",
        "_testimportmultiple",
        "_xxtestfuzz",
        "_ctypes_test",
    }
)

# Audit events refused outright (https://docs.python.org/3/library/audit_events.html).
FORBIDDEN_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "os.startfile",
        "os.putenv",
        "os.unsetenv",
        "os.chdir",
        "os.chmod",
        "os.chown",
        "os.chflags",
        "os.link",
        "os.symlink",
        "os.mkdir",
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.truncate",
        "os.utime",
        "os.listxattr",
        "os.setxattr",
        "os.removexattr",
        "os.add_dll_directory",
        "os.walk",
        "glob.glob",
        "glob.glob/2",
        "subprocess.Popen",
        "pty.spawn",
        "shutil.copyfile",
        "shutil.rmtree",
        "socket.__new__",
        "socket.bind",
        "socket.connect",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.sendto",
        "socket.sendmsg",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.dlsym/handle",
        "ctypes.cdata",
        "ctypes.cdata/buffer",
        "ctypes.call_function",
        "ctypes.addressof",
        "ctypes.PyObj_FromPtr",
        "ctypes.string_at",
        "ctypes.wstring_at",
        "ctypes.create_string_buffer",
        "ctypes.memmove",
        "ctypes.memset",
        "mmap.__new__",
        "_thread.start_new_thread",
        "_thread.start_joinable_thread",
        "cpython.PyInterpreterState_New",
        "cpython.run_command",
        "cpython.run_file",
        "cpython.run_module",
        "cpython.remote_debugger_script",
        "signal.pthread_kill",
        "resource.setrlimit",
        "resource.prlimit",
        "gc.get_referrers",
        "gc.get_referents",
        "gc.get_objects",
        "sys.setprofile",
        "sys.settrace",
        "sys._current_frames",
        "sys._current_exceptions",
        "code.__new__",
        "function.__new__",
        "pickle.find_class",
        "webbrowser.open",
        "urllib.Request",
        "http.client.connect",
        "syslog.openlog",
        "sqlite3.connect",
        "winreg.OpenKey",
    }
)


# os functions plugin code keeps: information about the process, and path operations (those that
# change anything raise audit events the hook refuses). The rest act on the whole process — exit
# and abort, raw descriptors (the host's database and Kafka sockets among them), signals,
# identity, children — and raise no audit event, so they are replaced.
KEPT_OS_FUNCTIONS = frozenset(
    {
        "WCOREDUMP", "WEXITSTATUS", "WIFCONTINUED", "WIFEXITED", "WIFSIGNALED", "WIFSTOPPED",
        "WSTOPSIG", "WTERMSIG", "waitstatus_to_exitcode", "_path_normpath", "_path_splitroot_ex",
        "access", "chdir", "chmod", "chown", "confstr", "cpu_count", "ctermid", "device_encoding",
        "fpathconf", "fspath", "fstat", "fstatvfs", "get_blocking", "get_inheritable",
        "get_terminal_size", "getcwd", "getcwdb", "getegid", "geteuid", "getgid", "getgrouplist",
        "getgroups", "getloadavg", "getlogin", "getpgid", "getpgrp", "getpid", "getppid",
        "getpriority", "getrandom", "getresgid", "getresuid", "getsid", "getuid", "isatty", "link",
        "listdir", "lstat", "major", "makedev", "minor", "mkdir", "open", "pathconf", "readlink",
        "register_at_fork",  # random registers a handler on import; fork itself is refused
        "remove", "rename", "replace", "rmdir", "scandir", "sched_get_priority_max",
        "sched_get_priority_min", "sched_getaffinity", "sched_getparam", "sched_getscheduler",
        "sched_rr_get_interval", "sched_yield", "stat", "statvfs", "strerror", "symlink", "sysconf",
        "times", "truncate", "ttyname", "uname", "unlink", "urandom", "utime",
    }
)  # fmt: skip
KEPT_SIGNAL_FUNCTIONS = frozenset(
    {"default_int_handler", "getitimer", "getsignal", "sigpending", "strsignal", "valid_signals"}
)
# interrupt_main raises KeyboardInterrupt in the host's main thread; stack_size is process-wide
REFUSED_THREAD_FUNCTIONS = frozenset({"interrupt_main", "stack_size"})


def is_forbidden_module(name: str) -> bool:
    return name in FORBIDDEN_MODULES or name.split(".", 1)[0] in FORBIDDEN_MODULES


def forbidden_import_message(name: str) -> str:
    return f"Cannot import '{name}'! This package is not provided by PostHog in plugins."


def _is_within(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def make_audit_hook(
    readable_roots: list[str], own_sockets: tuple[object, ...] = ()
) -> Callable[[str, tuple[Any, ...]], None]:
    """Refuse dangerous events; allow reading files only below `readable_roots`.

    `readable_roots` is a list the caller may extend later (a local plugin's directory).
    `own_sockets` may still use `sendmsg`: asyncio writes a reply that does not fit the socket
    buffer at once with it."""
    realpath = os.path.realpath

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event in FORBIDDEN_EVENTS:
            if event == "socket.sendmsg" and any(args[0] is own for own in own_sockets):
                return
            raise PermissionError(f"Plugins may not use {event}")
        if event == "open":
            path, mode = args[0], args[1]
            if isinstance(path, int):
                # wrapping a descriptor (e.g. the sandbox's own socket): the runtime opens its
                # descriptors before the hook is installed, so this is always plugin code
                raise PermissionError("Plugins may not open file descriptors")
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            )
            if writing or not _is_within(realpath(os.fsdecode(path)), readable_roots):
                raise PermissionError(f"Plugins may not open {os.fsdecode(path)!r}")
        elif event in ("os.listdir", "os.scandir"):
            path = args[0]
            if isinstance(path, int):
                raise PermissionError(f"Plugins may not use {event}")
            if not _is_within(realpath(os.fsdecode(path if path is not None else ".")), readable_roots):
                raise PermissionError(f"Plugins may not list {os.fsdecode(path or '.')!r}")
        elif event == "import":
            name = args[0]
            if is_forbidden_module(name):
                raise ImportError(forbidden_import_message(name))

    return audit


def _refuser(shown: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(f"Plugins may not use {shown}")

    refused.__name__ = refused.__qualname__ = shown.rsplit(".", 1)[-1]
    return refused


def disarm_process_functions() -> None:
    """Replace, in this interpreter, the os/signal/_thread functions that act on the whole process,
    wherever a loaded module holds them (`os._exit`, `random._os.close`, `signal.alarm`, ...), and
    empty this interpreter's copy of the environment (the host's secrets are in it).

    Call after the sandbox runtime took what it needs itself: references it keeps stay real."""
    replacements: dict[int, tuple[Any, Callable[..., Any]]] = {}
    plan = (
        ("posix", "os", lambda name: name not in KEPT_OS_FUNCTIONS),
        ("_signal", "signal", lambda name: name not in KEPT_SIGNAL_FUNCTIONS),
        ("_thread", "_thread", lambda name: name in REFUSED_THREAD_FUNCTIONS),
    )
    for module_name, shown, refuse in plan:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name, value in vars(module).items():
            if callable(value) and not isinstance(value, type) and refuse(name):
                replacements[id(value)] = (value, _refuser(f"{shown}.{name}"))
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            found = replacements.get(id(value))
            if found is not None and found[0] is value:
                namespace[name] = found[1]
    _guard_module_creation()
    os.environ._data.clear()  # type: ignore[attr-defined]  # not unsetenv: that is the process's
    posix = sys.modules.get("posix")
    if posix is not None:
        posix.environ.clear()


def _guard_module_creation() -> None:
    """Refuse forbidden C modules where every import path creates them: `importlib.import_module`
    and `reload` do not raise the audit hook's `import` event, so `posix` could be loaded afresh,
    with the functions disarm_process_functions() replaced."""
    import _imp

    def guarded(create: Callable[..., Any]) -> Callable[..., Any]:
        def create_module(spec: Any, *args: Any) -> Any:
            name = str(getattr(spec, "name", ""))
            if is_forbidden_module(name):
                raise ImportError(forbidden_import_message(name))
            return create(spec, *args)

        return create_module

    _imp.create_builtin = guarded(_imp.create_builtin)
    _imp.create_dynamic = guarded(_imp.create_dynamic)


def stdlib_roots() -> list[str]:
    """Directories plugin code may read: the standard library and the time zone database."""
    import zoneinfo

    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths}
    roots |= {os.path.realpath(p) for p in zoneinfo.TZPATH}
    return sorted(roots)


def install(readable_roots: list[str], own_sockets: tuple[object, ...] = ()) -> None:
    sys.dont_write_bytecode = True
    sys.addaudithook(make_audit_hook(readable_roots, own_sockets))


def guarded_builtins(
    print_fn: Callable[..., None], extra_imports: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The builtins plugin modules see: `__import__` limited to the allowlist, `print` to the log,
    no `input`; `open`, `exec`, `eval` stay but run under the audit hook."""
    allowed = ALLOWED_IMPORTS | extra_imports
    real_import = builtins.__import__

    def guarded_import(
        name: str,
        globals: dict[str, Any] | None = None,
        locals: dict[str, Any] | None = None,
        fromlist: tuple[str, ...] = (),
        level: int = 0,
    ) -> Any:
        if level != 0:
            raise ImportError(forbidden_import_message("." * level + name))
        if name not in allowed and name.split(".", 1)[0] not in allowed:
            raise ImportError(forbidden_import_message(name))
        if name.startswith("urllib") and name not in allowed:
            raise ImportError(forbidden_import_message(name))
        return real_import(name, globals, locals, fromlist, level)

    namespace = dict(vars(builtins))
    namespace["__import__"] = guarded_import
    namespace["print"] = print_fn
    for name in ("input", "breakpoint", "help", "exit", "quit", "copyright", "credits", "license"):
        namespace.pop(name, None)
    return namespace
