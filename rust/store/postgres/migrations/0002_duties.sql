-- Duties the workers of a queue share (alert evaluation), as in the SQLite engine's 0007:
-- a turn raises `fence`; its state and events are saved only while the fence is its own.
CREATE TABLE duties (
    queue     TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    fence     BIGINT NOT NULL,
    taken_at  BIGINT NOT NULL,
    state     TEXT   NOT NULL DEFAULT '{}',
    PRIMARY KEY (queue, name)
);
