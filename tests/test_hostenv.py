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


def test_import_environment_sets_the_cache_and_quiets_advisories_unless_set(tmp_path):
    xdg = {"XDG_CACHE_HOME": str(tmp_path)}
    quiet = {"TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    assert hostenv.import_environment(xdg) == {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "vlx" / "jax"),
        **quiet,
    }
    assert hostenv.import_environment({**xdg, "JAX_COMPILATION_CACHE_DIR": "/mine"}) == quiet
    assert hostenv.import_environment({**xdg, "JAX_COMPILATION_CACHE_DIR": ""}) == quiet  # off
    mine = {"TRANSFORMERS_NO_ADVISORY_WARNINGS": ""}
    assert "TRANSFORMERS_NO_ADVISORY_WARNINGS" not in hostenv.import_environment({**xdg, **mine})


def test_the_command_points_jax_at_the_compilation_cache(tmp_path):
    """What JAX itself reads in a `vlx` process, with and without the user's own setting."""
    code = (
        "import sys\n"
        "from vlx import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "import jax\n"
        "print('CACHE=' + str(jax.config.jax_compilation_cache_dir))\n"
    )
    base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}

    def seen(environ: dict) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
        ).stdout
        return out.strip().splitlines()[-1]

    assert seen({**base, "XDG_CACHE_HOME": str(tmp_path)}) == f"CACHE={tmp_path}/vlx/jax"
    assert seen({**base, "JAX_COMPILATION_CACHE_DIR": "/mine"}) == "CACHE=/mine"
