-- A message is stored once, whatever crashes or races: each append carries a key the
-- client made when the message was created, and an append whose key the session holds
-- already returns that message's id instead of adding it again.
--
-- A client cannot know whether an append whose COMMIT was cut off arrived; it keeps the
-- message (and its key) in its spool and appends it again later, and two processes may
-- flush one spool at once. The key makes all of these one message. Rows written before
-- have no key (NULL, which the unique index lets repeat).

ALTER TABLE oblix.messages ADD COLUMN key uuid;
ALTER TABLE oblix.messages ALTER COLUMN key SET STATISTICS 0;
CREATE UNIQUE INDEX messages_key ON oblix.messages (session_id, key);

DROP FUNCTION oblix.append_message(uuid, text, text, timestamptz, jsonb, timestamptz);

-- Appends one message at the next position and returns its id (msg_<n>: n is the position
-- unless an imported message has that id, then the next free number), or, when the session
-- holds a message of this ``idempotency`` key already, that message's id and nothing else.
-- The session row is locked first, until COMMIT: appends queue there, so they never gap,
-- repeat or reorder, and the key is looked for only once no other append can be adding it
-- (each statement here sees what committed before it began; the unique index is the
-- second wall). The caller's right is decided as before: the owner, or a write share.
-- Listeners hear "<session> <message id> <position>": the position lets one that lost its
-- connection ask for exactly the messages appended while it was away.
CREATE FUNCTION oblix.append_message(target uuid, speaker text, body text, said timestamptz, fields jsonb,
                                     changed timestamptz DEFAULT now(), idempotency uuid DEFAULT NULL)
    RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder text;
    place integer;
    number integer;
    stored text;
BEGIN
    SELECT s.owner INTO holder FROM oblix.sessions s
     WHERE s.id = target AND (s.owner = oblix.caller() OR EXISTS (
           SELECT 1 FROM oblix.shares h WHERE h.session_id = target AND h.grantee = oblix.caller() AND h.can_write))
       FOR UPDATE OF s;
    IF NOT FOUND THEN
        PERFORM oblix.refuse(target, 'add messages to');
    END IF;
    IF idempotency IS NOT NULL THEN
        SELECT m.id INTO stored FROM oblix.messages m WHERE m.session_id = target AND m.key = idempotency;
        IF FOUND THEN
            RETURN stored;
        END IF;
    END IF;
    UPDATE oblix.sessions s SET message_count = s.message_count + 1, updated_at = greatest(s.updated_at, changed)
     WHERE s.id = target RETURNING s.message_count INTO place;
    number := place;
    LOOP
        INSERT INTO oblix.messages (session_id, position, id, role, content, timestamp, extra, key)
        VALUES (target, place, 'msg_' || number, speaker, body, said,
                oblix.own_fields_only(fields, ARRAY['id', 'role', 'content', 'timestamp']), idempotency)
        ON CONFLICT (session_id, id) DO NOTHING;
        EXIT WHEN FOUND;
        number := number + 1;
    END LOOP;
    PERFORM pg_notify(oblix.channel_of(r.reader), target::text || ' msg_' || number || ' ' || place)
       FROM (SELECT holder UNION SELECT h.grantee FROM oblix.shares h WHERE h.session_id = target) r (reader);
    RETURN 'msg_' || number;
END $$;

REVOKE ALL ON FUNCTION oblix.append_message(uuid, text, text, timestamptz, jsonb, timestamptz, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oblix.append_message(uuid, text, text, timestamptz, jsonb, timestamptz, uuid) TO oblix_users;
