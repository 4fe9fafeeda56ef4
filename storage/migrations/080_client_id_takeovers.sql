-- Client-id takeovers (issue 4): a certificate identity that connected to the broker under a
-- client id that is not its own. Mosquitto cannot bind the client id to the certificate, so
-- these are detected afterwards in its connection log (devices/takeover.py) and kept here.
-- The watcher may read a log line again after a restart: the broker's time, the peer
-- address and port, and the client id name one connection, so a line is recorded once.
CREATE TABLE client_id_takeovers (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                  timestamptz NOT NULL,  -- the broker's log time (second resolution)
    client_id           text NOT NULL CHECK (length(client_id) <= 256),  -- the id claimed
    identity            text NOT NULL,         -- the certificate's CN that claimed it
    peer                text NOT NULL,         -- address:port (security record, never logged)
    live_session_closed boolean NOT NULL,      -- the id's owner was connected and was cut off
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (at, peer, client_id)
);
CREATE INDEX client_id_takeovers_by_client_id ON client_id_takeovers (client_id, at);
CREATE INDEX client_id_takeovers_by_identity ON client_id_takeovers (identity, at);
