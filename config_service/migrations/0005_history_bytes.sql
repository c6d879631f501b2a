-- The size of a history row's values (as PostgreSQL prints them), kept with the row so
-- that a page of history is cut by bytes in the database: ListConfigHistory reads the
-- values of the rows it returns only, never those of a thousand rows of 64 KiB values
-- to return the few that fit in a page.
ALTER TABLE config.history ADD COLUMN value_bytes integer NOT NULL
    GENERATED ALWAYS AS (
        coalesce(octet_length(old_value::text), 0) + coalesce(octet_length(new_value::text), 0)
    ) STORED;
