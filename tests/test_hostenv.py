import os
import subprocess
import sys

from vlx import hostenv


def test_reexec_environment_adds_the_hugepage_tunable_once_and_only_on_linux():
    env = hostenv.reexec_environment({"PATH": "/bin"}, platform="linux")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert hostenv.reexec_environment(env, platform="linux") is None
    assert hostenv.reexec_environment({"GLIBC_TUNABLES": "mine"}, platform="linux") is None
    assert hostenv.reexec_environment({"PATH": "/bin"}, platform="darwin") is None


def _tunables_seen_by_the_command(environ: dict) -> str:
    """Runs `vlx --help` as the command line runs it (`main()` with no arguments) and reports
    the GLIBC_TUNABLES of the process that went on to parse the arguments."""
    code = (
        "import os, sys\n"
        "from vlx import cli\n"
        "sys.argv = ['vlx', '--help']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', '<unset>'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    ).stdout
    return out.strip().splitlines()[-1]


def test_the_command_reexecutes_itself_with_the_tunable_unless_the_user_set_one():
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    expected = "glibc.malloc.hugetlb=1" if sys.platform.startswith("linux") else "<unset>"
    assert _tunables_seen_by_the_command(base) == f"TUNABLES={expected}"
    mine = {**base, "GLIBC_TUNABLES": "glibc.malloc.check=0"}
    assert _tunables_seen_by_the_command(mine) == "TUNABLES=glibc.malloc.check=0"
