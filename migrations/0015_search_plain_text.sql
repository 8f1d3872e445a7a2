-- Search log lines by their text without terminal escapes (issue 16).
--
-- Coloured output was indexed as it was stored: "\x1b[31merror\x1b[0m" became
-- the tokens "31merror" and "0m", so a search for "error" missed it. The line
-- stays stored as it came (the dashboard renders its colours); only what goes
-- into task_search loses its escapes.
--
-- The stripping is SQL, not a Python function, because the index is kept by
-- triggers: every connection that inserts or deletes log lines (retention,
-- cascades from tasks, the sqlite3 shell) must compute the same text, since a
-- contentless FTS5 'delete' has to be given exactly the text that was indexed.
-- It follows app/dashboard/ansi.py's OTHER pattern (tests/test_search.py
-- compares the two): CSI sequences (SGR colours, cursor moves), OSC strings
-- ended by BEL or ST, and a lone escape with its one following byte. Control
-- characters stay; the tokenizer treats them as separators anyway.
--
-- A line without an escape costs one instr(); the recursion steps once per
-- escape, not once per character.
CREATE VIEW task_log_plain AS
SELECT task_id, seq, text, CASE WHEN instr(text, char(27)) = 0 THEN text ELSE (
    -- done: text kept so far; rest: what is left, starting right after an escape
    -- when after_esc is 1.
    WITH RECURSIVE strip (done, rest, after_esc) AS (
        SELECT '', text, 0
        UNION ALL
        SELECT
            CASE WHEN after_esc THEN done
                ELSE done || substr(rest, 1, instr(rest, char(27)) - 1) END,
            CASE
                WHEN NOT after_esc THEN substr(rest, instr(rest, char(27)) + 1)
                -- CSI: parameter bytes, intermediate bytes, one final byte @ to ~.
                WHEN substr(rest, 1, 1) = '[' THEN CASE
                    WHEN unicode(ltrim(ltrim(substr(rest, 2), '0123456789;?'),
                                       ' !"#$%&''()*+,-./')) BETWEEN 64 AND 126
                    THEN substr(ltrim(ltrim(substr(rest, 2), '0123456789;?'),
                                      ' !"#$%&''()*+,-./'), 2)
                    ELSE substr(rest, 2) END
                -- OSC: up to BEL (dropped), ESC \ (dropped) or another ESC (kept).
                WHEN substr(rest, 1, 1) = ']' THEN CASE
                    WHEN instr(rest, char(7)) = 0 AND instr(rest, char(27)) = 0 THEN ''
                    WHEN instr(rest, char(27)) = 0
                        OR (instr(rest, char(7)) > 0 AND instr(rest, char(7)) < instr(rest, char(27)))
                    THEN substr(rest, instr(rest, char(7)) + 1)
                    WHEN substr(rest, instr(rest, char(27)) + 1, 1) = '\'
                    THEN substr(rest, instr(rest, char(27)) + 2)
                    ELSE substr(rest, instr(rest, char(27))) END
                -- Any other escape takes one byte from @ to _ with it, if there is one.
                WHEN unicode(rest) BETWEEN 64 AND 95 THEN substr(rest, 2)
                ELSE rest END,
            NOT after_esc
        FROM strip
        WHERE after_esc OR instr(rest, char(27)) > 0
    )
    SELECT done || rest FROM strip WHERE NOT after_esc AND instr(rest, char(27)) = 0
) END AS body
FROM task_logs;

DROP TRIGGER task_search_log_insert;
DROP TRIGGER task_search_log_delete;

CREATE TRIGGER task_search_log_insert AFTER INSERT ON task_logs BEGIN
    INSERT INTO task_search (rowid, body) VALUES (
        new.task_id * 4294967296 + new.seq,
        CASE WHEN instr(new.text, char(27)) = 0 THEN new.text ELSE (SELECT body
            FROM task_log_plain WHERE task_id = new.task_id AND seq = new.seq) END
    );
END;

-- BEFORE, so the row is still there to be read through the view. SQLite fires it
-- for log lines deleted by the cascade from tasks too.
CREATE TRIGGER task_search_log_delete BEFORE DELETE ON task_logs BEGIN
    INSERT INTO task_search (task_search, rowid, body) VALUES (
        'delete', old.task_id * 4294967296 + old.seq,
        CASE WHEN instr(old.text, char(27)) = 0 THEN old.text ELSE (SELECT body
            FROM task_log_plain WHERE task_id = old.task_id AND seq = old.seq) END
    );
END;

-- Lines already indexed with their escapes: take the old tokens out, put the plain ones in.
INSERT INTO task_search (task_search, rowid, body)
    SELECT 'delete', task_id * 4294967296 + seq, text FROM task_logs
    WHERE instr(text, char(27)) > 0;
INSERT INTO task_search (rowid, body)
    SELECT task_id * 4294967296 + seq, body FROM task_log_plain
    WHERE instr(text, char(27)) > 0;
