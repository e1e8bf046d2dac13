import psycopg


def test_starting_a_running_server_leaves_it_running(pg_server):
    assert pg_server.running()
    pg_server.start()  # make up runs `soc local-db start` every time
    with psycopg.connect(pg_server.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
