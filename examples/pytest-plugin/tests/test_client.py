"""A user's repository testing its clients against tpemu (the fixtures come with pip install tpemu)."""
import subprocess


def test_psql_and_ssh_through_tpemu(tpemu_user):
    psql = subprocess.run(["psql", tpemu_user.db_url("pg"), "-Atc", "select 1 + 1"], capture_output=True, text=True)
    assert psql.stdout == "2\n", psql.stderr
    ssh = subprocess.run(["ssh", "-F", tpemu_user.ssh_config(), "-o", "BatchMode=yes",
                          tpemu_user.ssh_target("node1"), "echo hello"], capture_output=True, text=True)
    assert ssh.stdout == "hello\n", ssh.stderr
