"""The test and demo broker helper (jcm/broker.py) returns only once its own Mosquitto listens."""

import socket

import pytest

from jcm.broker import Mosquitto, listens


def test_a_port_another_process_listens_on_is_not_taken_for_our_broker(tmp_path):
    """``free_port`` gives a port up before Mosquitto binds it: another process may take it meanwhile.
    Mosquitto then exits, but the port answers, and a test would talk to another test's broker."""
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]
    try:
        with pytest.raises(RuntimeError, match="another process has the port"):
            Mosquitto(tmp_path / "given", port=port).start()
        chosen = Mosquitto(tmp_path / "chosen")
        chosen._configure(port)  # as if another process took the port free_port chose, before Mosquitto bound it
        chosen.start()
        try:
            assert chosen.port != port and listens(chosen.proc, chosen.port)
        finally:
            chosen.stop()
    finally:
        other.close()


def test_a_database_server_whose_port_another_process_took_is_an_error(tmp_path):
    """The same for the test servers (InfluxDB, VictoriaMetrics): one that cannot bind its port exits, and
    the port answers for another process; the fixture says so instead of handing out another's server."""
    import shutil

    from tests.conftest import ServerProcess

    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]
    try:
        server = ServerProcess([shutil.which("victoria-metrics"), f"-storageDataPath={tmp_path}/data",
                                f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=ERROR"], port, tmp_path)
        with pytest.raises(RuntimeError, match="victoria-metrics could not listen on .*another process has the port"):
            server.start()
        assert server.proc.poll() is not None
    finally:
        other.close()
