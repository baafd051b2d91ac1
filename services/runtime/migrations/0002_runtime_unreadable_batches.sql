-- Record batches this service's consumer stepped over because it could not read them (a codec
-- whose library it lacks, damaged bytes): the records were never decoded, so this row is all
-- there is to tell an operator which offsets to get again from their producer.
CREATE TABLE unreadable_batches (
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    first_offset  bigint      NOT NULL,
    last_offset   bigint      NOT NULL CHECK (last_offset >= first_offset),
    codec         text        NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    times_seen    integer     NOT NULL DEFAULT 1,
    PRIMARY KEY (topic, partition, first_offset)
);
