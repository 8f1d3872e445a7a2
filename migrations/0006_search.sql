-- Full-text search over task prompts and log lines (the dashboard's Tasks search).
--
-- Contentless FTS5: the text already lives in tasks and task_logs, so the index
-- keeps only tokens, not a second copy of every log line. A row's rowid encodes
-- where it came from: task_id * 2^32 + seq, where seq 0 is the prompt and
-- seq >= 1 is that log line. `rowid / 4294967296` gives the task back, and all
-- rows of a task sit in one rowid range.
--
-- SQLite 3.40 (Debian 12) has no contentless_delete, so rows leave the index
-- through the FTS5 'delete' command, which needs the original text: the
-- triggers below pass old.prompt / old.text. Deleting a task cascades to its
-- log lines, and SQLite fires the task_logs trigger for each cascaded row.
CREATE VIRTUAL TABLE task_search USING fts5 (
    body,
    content = '',
    tokenize = 'unicode61 remove_diacritics 2'
);

INSERT INTO task_search (rowid, body) SELECT id * 4294967296, prompt FROM tasks;
INSERT INTO task_search (rowid, body)
    SELECT task_id * 4294967296 + seq, text FROM task_logs;

CREATE TRIGGER task_search_task_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_search (rowid, body) VALUES (new.id * 4294967296, new.prompt);
END;

CREATE TRIGGER task_search_task_prompt AFTER UPDATE OF prompt ON tasks
WHEN old.prompt IS NOT new.prompt BEGIN
    INSERT INTO task_search (task_search, rowid, body)
        VALUES ('delete', old.id * 4294967296, old.prompt);
    INSERT INTO task_search (rowid, body) VALUES (new.id * 4294967296, new.prompt);
END;

CREATE TRIGGER task_search_task_delete AFTER DELETE ON tasks BEGIN
    INSERT INTO task_search (task_search, rowid, body)
        VALUES ('delete', old.id * 4294967296, old.prompt);
END;

CREATE TRIGGER task_search_log_insert AFTER INSERT ON task_logs BEGIN
    INSERT INTO task_search (rowid, body) VALUES (new.task_id * 4294967296 + new.seq, new.text);
END;

CREATE TRIGGER task_search_log_delete AFTER DELETE ON task_logs BEGIN
    INSERT INTO task_search (task_search, rowid, body)
        VALUES ('delete', old.task_id * 4294967296 + old.seq, old.text);
END;
