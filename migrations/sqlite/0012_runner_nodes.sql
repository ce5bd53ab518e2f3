-- The nodes that run builds, each with its build slots, announced while it runs (renewed like a lease,
-- deleted when it stops): what the queue explanation of a queued build counts runner slots from.
CREATE TABLE runner_nodes (
    node_id    TEXT PRIMARY KEY,
    slots      INTEGER NOT NULL,
    seen_on    INTEGER NOT NULL,
    -- Until when the announcement holds (epoch ms); a node not heard of since is not live.
    expires_on INTEGER NOT NULL
);
