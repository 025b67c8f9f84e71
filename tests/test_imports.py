import subprocess
import sys

CHECK = """
import sys
import fedstack, fedstack.loop, fedstack.experiment, fedstack.engine, fedstack.store, fedstack.cli
import fedstack.codec, fedstack.strategy, fedstack.data, fedstack.report, fedstack.config
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'grpc', 'ray', 'psycopg2', 'pymysql', 'sqlalchemy'})
print(heavy)
"""


def test_core_imports_without_grpc_ray_or_db_drivers():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _import_graph() -> dict[str, set[str]]:
    """fedstack's modules and the fedstack modules each imports, at module level or inside functions
    (`from X import name` counts as importing X.name when that is a module, else X)."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "src"
    root = src / "fedstack"

    def is_module(name: str) -> bool:
        path = src / name.replace(".", "/")
        return path.with_suffix(".py").exists() or (path / "__init__.py").exists()

    graph = {}
    for file in root.rglob("*.py"):
        if file.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        parts = list(file.relative_to(src).with_suffix("").parts)
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        name = ".".join(parts if parts[-1] != "__init__" else parts[:-1])
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package[: len(package) - (node.level - 1)]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                if base.split(".")[0] != "fedstack":
                    continue
                subs = [f"{base}.{a.name}" for a in node.names]
                deps.update(s for s in subs if is_module(s))
                if not all(is_module(s) for s in subs):
                    deps.add(base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "fedstack")
        graph[name] = deps - {name}
    return graph


def test_no_import_cycle_and_layers_point_one_way():
    graph = _import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for dep in graph.get(node, ()):
                if dep == goal:
                    return True
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return False

    cyclic = sorted(m for m in graph if reaches(m, m))
    assert not cyclic, f"modules on an import cycle: {cyclic}"
    loops = {m for m in graph if m.startswith("fedstack.loop")}
    loops |= {"fedstack.decentralized.schedule", "fedstack.decentralized.run", "fedstack.experiment"}
    for module, deps in graph.items():
        if module.startswith("fedstack.transport"):
            assert not deps & loops, (module, deps & loops)  # the wire never imports a round loop or the assembly
        if module.startswith("fedstack.engine"):
            assert not {d for d in deps if d.startswith(("fedstack.attack", "fedstack.strategy"))}, module
