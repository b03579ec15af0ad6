-- Duties the workers of a queue share (alert evaluation): one row per duty. A process takes
-- a turn when the last was taken `every` ago, raising `fence`; it saves the turn's `state`
-- (JSON) and its events only while `fence` is still its own (a compare-and-set), so each
-- turn is done once across processes.
CREATE TABLE duties (
    queue     TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    fence     INTEGER NOT NULL,
    taken_at  INTEGER NOT NULL,
    state     TEXT    NOT NULL DEFAULT '{}',
    PRIMARY KEY (queue, name)
) WITHOUT ROWID;
