-- The images a user's message carries (a figure a cell displayed), kept per session under
-- the SHA-256 of their bytes, as private as the session's messages.
--
-- As for every table since 002, users hold no privilege on it (no SELECT, so no EXPLAIN,
-- no statistics, no LOCK TABLE): the two functions below are the only way in, and decide
-- on session_user as the message functions do: who may read the session reads its
-- attachments, who may add messages to it adds them. They go with their session (the
-- foreign key), so deleting a session deletes every byte of them. The row-level policies
-- mirror the messages' own, a second wall for anyone ever granted the table.

CREATE TABLE oblix.attachments (
    owner text NOT NULL,                       -- the session's owner, as for messages
    session_id uuid NOT NULL REFERENCES oblix.sessions (id) ON DELETE CASCADE,
    id text NOT NULL CHECK (id ~ '^[0-9a-f]{64}$'),
    data bytea NOT NULL CHECK (octet_length(data) BETWEEN 1 AND 20971520),
    PRIMARY KEY (session_id, id)
);
ALTER TABLE oblix.attachments ALTER COLUMN id SET STATISTICS 0, ALTER COLUMN data SET STATISTICS 0;
ALTER TABLE oblix.attachments ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY attachments_read ON oblix.attachments FOR SELECT
    USING (owner = current_user OR session_id IN (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = current_user));
CREATE POLICY attachments_added ON oblix.attachments FOR INSERT
    WITH CHECK (owner = current_user
                OR session_id IN (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = current_user AND h.can_write));
REVOKE ALL ON oblix.attachments FROM oblix_users, PUBLIC;

-- Owner or write sharee: keeps ``body`` under ``digest``, which must be its SHA-256 (so an
-- id never names other bytes than its own), unless the session holds it already.
CREATE FUNCTION oblix.write_attachment(target uuid, digest text, body bytea) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT oblix.can_write(target) THEN
        PERFORM oblix.refuse(target, 'add to');
    END IF;
    IF digest IS NULL OR body IS NULL OR encode(sha256(body), 'hex') <> digest THEN
        RAISE EXCEPTION USING ERRCODE = 'OB400', MESSAGE = 'An attachment''s id is the SHA-256 of its bytes.';
    END IF;
    INSERT INTO oblix.attachments (owner, session_id, id, data)
    SELECT s.owner, target, digest, body FROM oblix.sessions s WHERE s.id = target
    ON CONFLICT DO NOTHING;
END $$;

-- Who may read the session: the attachment's bytes; NULL when there is none they may read.
CREATE FUNCTION oblix.read_attachment(target uuid, digest text) RETURNS bytea
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.data FROM oblix.attachments a WHERE a.session_id = target AND a.id = digest AND oblix.readable(target)
$$;

REVOKE ALL ON FUNCTION oblix.write_attachment(uuid, text, bytea), oblix.read_attachment(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oblix.write_attachment(uuid, text, bytea), oblix.read_attachment(uuid, text) TO oblix_users;
