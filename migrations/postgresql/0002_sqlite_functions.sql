-- SQLite's functions that the feature code's SQL uses, defined in PostgreSQL so
-- that one statement serves both engines (app/pgsql.py rewrites only placeholders,
-- BEGIN IMMEDIATE and JSON-list parameters). Each keeps SQLite's meaning for the
-- values the hub stores.

-- sum(condition): SQLite counts the true ones; NULL for no rows or only NULLs.
CREATE FUNCTION agented_count_true(acc bigint, value boolean) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN value IS NULL THEN acc ELSE coalesce(acc, 0) + value::int END
$$;
CREATE AGGREGATE sum(boolean) (SFUNC = agented_count_true, STYPE = bigint);

-- max(condition) and min(condition): whether any (all) of them hold.
CREATE AGGREGATE max(boolean) (SFUNC = boolor_statefunc, STYPE = boolean);
CREATE AGGREGATE min(boolean) (SFUNC = booland_statefunc, STYPE = boolean);

-- total(x): sum() that gives 0.0 instead of NULL.
CREATE AGGREGATE total(double precision) (SFUNC = float8pl, STYPE = float8, INITCOND = '0');

-- group_concat(x [, separator]); ',' by default.
CREATE FUNCTION agented_concat(acc text, value text, sep text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN value IS NULL THEN acc WHEN acc IS NULL THEN value
        ELSE acc || sep || value END
$$;
CREATE FUNCTION agented_concat(acc text, value text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT agented_concat(acc, value, ',') $$;
CREATE AGGREGATE group_concat(text) (SFUNC = agented_concat, STYPE = text);
CREATE AGGREGATE group_concat(text, text) (SFUNC = agented_concat, STYPE = text);

-- max(a, b) and min(a, b), the scalar forms (the one-argument aggregates are built in).
-- Like SQLite, a NULL argument gives NULL (greatest/least would skip it).
CREATE FUNCTION max(a anycompatible, b anycompatible) RETURNS anycompatible
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN a IS NULL OR b IS NULL THEN NULL ELSE greatest(a, b) END
$$;
CREATE FUNCTION min(a anycompatible, b anycompatible) RETURNS anycompatible
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN a IS NULL OR b IS NULL THEN NULL ELSE least(a, b) END
$$;

-- json_extract(doc, '$.a.b'): the value at a path, as text (the hub reads ids).
CREATE FUNCTION json_extract(doc text, path text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT doc::json #>> string_to_array(substr(path, 3), '.')
$$;

-- strftime(format, seconds, 'unixepoch'): %Y %m %d %H %M %S in UTC.
CREATE FUNCTION strftime(format text, t double precision, modifier text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT replace(replace(replace(replace(replace(replace(format,
        '%Y', to_char(ts, 'YYYY')), '%m', to_char(ts, 'MM')), '%d', to_char(ts, 'DD')),
        '%H', to_char(ts, 'HH24')), '%M', to_char(ts, 'MI')), '%S', to_char(ts, 'SS'))
    FROM (SELECT to_timestamp(t) AT TIME ZONE 'UTC' AS ts) AS utc
$$;
