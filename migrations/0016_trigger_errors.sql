-- A trigger that cannot start work says so (issue 16): a cron trigger whose
-- template fails to render at its slot records why and when, shows it on its
-- page and fires the `triggers_failing` alert, instead of only logging it.
-- A fire that renders clears it.
ALTER TABLE triggers ADD COLUMN last_error TEXT;
ALTER TABLE triggers ADD COLUMN last_error_at REAL;
ALTER TABLE triggers ADD COLUMN last_fired_at REAL;
