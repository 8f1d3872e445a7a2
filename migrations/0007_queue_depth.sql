-- The number of queued tasks, kept by triggers, so the pending cap is checked
-- with one row read instead of a COUNT that grows with the queue.
CREATE TABLE queue_depth (id INTEGER PRIMARY KEY CHECK (id = 1), queued INTEGER NOT NULL);
INSERT INTO queue_depth (id, queued) SELECT 1, count(*) FROM tasks WHERE state = 'queued';

CREATE TRIGGER queue_depth_insert AFTER INSERT ON tasks WHEN NEW.state = 'queued'
BEGIN
    UPDATE queue_depth SET queued = queued + 1 WHERE id = 1;
END;

CREATE TRIGGER queue_depth_delete AFTER DELETE ON tasks WHEN OLD.state = 'queued'
BEGIN
    UPDATE queue_depth SET queued = queued - 1 WHERE id = 1;
END;

CREATE TRIGGER queue_depth_update AFTER UPDATE OF state ON tasks
WHEN (OLD.state = 'queued') != (NEW.state = 'queued')
BEGIN
    UPDATE queue_depth
    SET queued = queued + CASE WHEN NEW.state = 'queued' THEN 1 ELSE -1 END
    WHERE id = 1;
END;
