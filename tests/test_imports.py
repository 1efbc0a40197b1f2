"""The core never imports a framework: import ptycho, backends, parity in a fresh interpreter."""

import subprocess
import sys

CODE = """
import sys
import ptycho, backends, parity
import ptycho.config, ptycho.physics, ptycho.weights, ptycho.training, ptycho.batch
import backends.protocol, backends.registry
leaked = [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules]
print(','.join(leaked))
"""


def test_core_imports_leave_frameworks_out_of_sys_modules():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"framework modules imported by the core: {out.stdout.strip()}"
