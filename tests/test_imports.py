import subprocess
import sys

CHECK = """
import sys
import fedstack, fedstack.server, fedstack.experiment, fedstack.engine, fedstack.store, fedstack.cli
import fedstack.codec, fedstack.strategy, fedstack.data, fedstack.report, fedstack.config
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'grpc', 'ray', 'psycopg2', 'pymysql', 'sqlalchemy'})
print(heavy)
"""


def test_core_imports_without_grpc_ray_or_db_drivers():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
