-- Sessions, their messages, shares, notebook bindings and vectors, private to their owner.
--
-- Privacy is PostgreSQL's job, not the client's: every table has row-level security
-- (FORCE: it binds the tables' owner too), keyed on current_user, so another user's rows
-- are invisible even to raw SQL on that user's own connection. Users get their rights
-- through the oblix_users group role (`add_user`). Owners are immutable: no user may
-- UPDATE the owner column. Policies on sessions and messages consult shares; those on
-- shares consult only their own columns, so no policy ever recurses. Each policy reads
-- the user's shares once per statement (``IN (SELECT ...)``), never once per row.

DO $$ BEGIN  -- roles are cluster-wide: another database's oblix schema may have made it
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'oblix_users') THEN CREATE ROLE oblix_users NOLOGIN; END IF;
END $$;
GRANT USAGE ON SCHEMA oblix TO oblix_users;
GRANT SELECT ON oblix.migrations TO oblix_users;

CREATE TABLE oblix.sessions (
    id uuid PRIMARY KEY,
    owner text NOT NULL DEFAULT current_user,
    title text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    message_count integer NOT NULL DEFAULT 0,  -- also the position of the last message
    context jsonb DEFAULT '{}',
    model text,
    metadata jsonb DEFAULT '{}',
    extra jsonb NOT NULL DEFAULT '{}',         -- fields front ends add through update_session
    schema_version integer NOT NULL,           -- of the session's shape (store/migrations.py)
    title_text tsvector GENERATED ALWAYS AS (to_tsvector('english', title)) STORED
);
CREATE INDEX sessions_by_recency ON oblix.sessions (owner, updated_at DESC, id DESC);
CREATE INDEX sessions_title_text ON oblix.sessions USING gin (title_text);

CREATE TABLE oblix.messages (
    session_id uuid NOT NULL REFERENCES oblix.sessions ON DELETE CASCADE,
    owner text NOT NULL,                       -- the session's owner, set by messages_owned (immutable)
    position integer NOT NULL,                 -- 1, 2, 3... in append order, never a gap
    id text NOT NULL,                          -- msg_<n>, or an imported message's own id
    role text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content text NOT NULL,
    timestamp timestamptz NOT NULL,
    extra jsonb NOT NULL DEFAULT '{}',         -- model, status, usage...
    content_text tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    PRIMARY KEY (session_id, position),
    UNIQUE (session_id, id)
);
CREATE INDEX messages_content_text ON oblix.messages USING gin (content_text);

CREATE TABLE oblix.shares (
    session_id uuid NOT NULL REFERENCES oblix.sessions ON DELETE CASCADE,
    grantee text NOT NULL,
    owner text NOT NULL DEFAULT current_user,  -- the session's owner (immutable), so policies need not read sessions
    can_write boolean NOT NULL DEFAULT false,
    PRIMARY KEY (session_id, grantee)
);
CREATE INDEX shares_by_grantee ON oblix.shares (grantee);

CREATE TABLE oblix.bindings (
    owner text NOT NULL DEFAULT current_user,
    notebook text NOT NULL,
    session_id uuid NOT NULL REFERENCES oblix.sessions ON DELETE CASCADE,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, notebook)
);
CREATE INDEX bindings_by_session ON oblix.bindings (session_id);

-- Vectors by content key, kept per user: whether a user holds a vector for some content
-- must not tell what another user's sessions contain.
CREATE TABLE oblix.vectors (
    owner text NOT NULL DEFAULT current_user,
    model text NOT NULL,
    key text NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (owner, model, key)
);
CREATE TABLE oblix.uses (
    owner text NOT NULL DEFAULT current_user,
    session_id uuid NOT NULL REFERENCES oblix.sessions ON DELETE CASCADE,
    model text NOT NULL,
    key text NOT NULL,
    PRIMARY KEY (session_id, owner, model, key)
);
CREATE INDEX uses_of_vector ON oblix.uses (owner, model, key);

ALTER TABLE oblix.sessions ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE oblix.messages ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE oblix.shares ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE oblix.bindings ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE oblix.vectors ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE oblix.uses ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

CREATE POLICY shares_seen ON oblix.shares FOR SELECT
    USING (owner = current_user OR grantee = current_user);
CREATE POLICY shares_given ON oblix.shares FOR INSERT
    WITH CHECK (owner = current_user AND grantee <> current_user
                AND EXISTS (SELECT 1 FROM oblix.sessions s WHERE s.id = session_id AND s.owner = current_user));
CREATE POLICY shares_changed ON oblix.shares FOR UPDATE USING (owner = current_user);
CREATE POLICY shares_taken_back ON oblix.shares FOR DELETE USING (owner = current_user);

CREATE POLICY sessions_read ON oblix.sessions FOR SELECT
    USING (owner = current_user OR id IN (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = current_user));
CREATE POLICY sessions_created ON oblix.sessions FOR INSERT WITH CHECK (owner = current_user);
CREATE POLICY sessions_written ON oblix.sessions FOR UPDATE
    USING (owner = current_user
           OR id IN (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = current_user AND h.can_write));
CREATE POLICY sessions_deleted ON oblix.sessions FOR DELETE USING (owner = current_user);

-- A message is as visible as its session; only who may write the session may add one.
-- Its owner column is the session's, always (messages_owned), so neither policy reads sessions.
CREATE POLICY messages_read ON oblix.messages FOR SELECT
    USING (owner = current_user OR session_id IN (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = current_user));
CREATE POLICY messages_added ON oblix.messages FOR INSERT
    WITH CHECK (owner = current_user
                OR session_id IN (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = current_user AND h.can_write));

CREATE POLICY bindings_own ON oblix.bindings FOR ALL
    USING (owner = current_user)
    WITH CHECK (owner = current_user AND EXISTS (SELECT 1 FROM oblix.sessions s WHERE s.id = session_id));

CREATE POLICY vectors_own ON oblix.vectors FOR ALL USING (owner = current_user) WITH CHECK (owner = current_user);
CREATE POLICY uses_own ON oblix.uses FOR ALL
    USING (owner = current_user)
    WITH CHECK (owner = current_user AND EXISTS (SELECT 1 FROM oblix.sessions s WHERE s.id = session_id));

-- Column privileges: no user may change a session's id, owner or creation time, nor
-- any message once written (a session's messages go only with the session).
GRANT SELECT, INSERT, DELETE ON oblix.sessions TO oblix_users;
GRANT UPDATE (title, updated_at, message_count, context, model, metadata, extra, schema_version)
    ON oblix.sessions TO oblix_users;
GRANT SELECT, INSERT ON oblix.messages TO oblix_users;
GRANT SELECT, INSERT, DELETE, UPDATE (can_write) ON oblix.shares TO oblix_users;
GRANT SELECT, INSERT, DELETE, UPDATE (session_id, updated_at) ON oblix.bindings TO oblix_users;
GRANT SELECT, INSERT, DELETE ON oblix.vectors TO oblix_users;
GRANT SELECT, INSERT, DELETE ON oblix.uses TO oblix_users;

-- A message's owner is its session's, whatever the inserter wrote: read as the inserter,
-- who sees the session if they may read it (if not, NULL, which NOT NULL refuses).
CREATE FUNCTION oblix.own_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.owner := (SELECT s.owner FROM oblix.sessions s WHERE s.id = NEW.session_id);
    RETURN NEW;
END $$;
CREATE TRIGGER messages_owned BEFORE INSERT ON oblix.messages
    FOR EACH ROW EXECUTE FUNCTION oblix.own_message();

-- Every append tells listeners which message of which session arrived, on a channel of
-- that session (oblix_<id>): any role may LISTEN to any channel, so only one who knows
-- the session's id hears of it, and hears ids only, never content.
CREATE FUNCTION oblix.notify_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('oblix_' || NEW.session_id::text, NEW.session_id::text || ' ' || NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER messages_notify AFTER INSERT ON oblix.messages
    FOR EACH ROW EXECUTE FUNCTION oblix.notify_append();

-- A use removed (by a delete of its session, whoever's it was) removes the vector no
-- other session of that user uses. It runs as the schema's owner (a superuser, who
-- passes row security), because the session's owner cannot see the writers' vectors.
CREATE FUNCTION oblix.forget_unused_vector() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM oblix.vectors v
     WHERE v.owner = OLD.owner AND v.model = OLD.model AND v.key = OLD.key
       AND NOT EXISTS (SELECT 1 FROM oblix.uses u WHERE u.owner = OLD.owner AND u.model = OLD.model AND u.key = OLD.key);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION oblix.forget_unused_vector() FROM PUBLIC;
CREATE TRIGGER uses_forget AFTER DELETE ON oblix.uses
    FOR EACH ROW EXECUTE FUNCTION oblix.forget_unused_vector();

-- Full-text search through the GIN indexes. Under row security PostgreSQL cannot use them
-- (`@@` is not leakproof, so it would test every row after the policies), so this runs as
-- the schema's owner, who passes row security, and restricts itself to the sessions
-- session_user may read: their own and those shared with them, exactly as the policies
-- do. It trusts no argument for that (current_user, in here, is the owner). One row per
-- session: its best hit (a title counts double) and that hit's text.
CREATE FUNCTION oblix.search_hits(query tsquery)
    RETURNS TABLE (session_id uuid, rank real, text text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH shared AS (SELECT h.session_id FROM oblix.shares h WHERE h.grantee = session_user),
    hits AS (
        SELECT s.id, ts_rank(s.title_text, query) * 2, s.title FROM oblix.sessions s
         WHERE s.title_text @@ query AND (s.owner = session_user OR s.id IN (SELECT * FROM shared))
        UNION ALL
        SELECT m.session_id, ts_rank(m.content_text, query), m.content FROM oblix.messages m
         WHERE m.content_text @@ query AND (m.owner = session_user OR m.session_id IN (SELECT * FROM shared))
    )
    SELECT DISTINCT ON (id) * FROM hits h (id, rank, text) ORDER BY id, rank DESC
$$;
REVOKE ALL ON FUNCTION oblix.search_hits(tsquery) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oblix.search_hits(tsquery) TO oblix_users;
