/* The walk of etcd's bucket `key` compiled: the one loop of a verify or an inspect that runs per
 * page and per record, over hundreds of thousands of leaf pages on a Kubernetes-shaped database.
 *
 * It makes every check bbolt.py makes on the pages it reaches and replays the records as
 * status.replay does, but it does not name damage: on anything unusual (a bad page, a key out of
 * order, a record that is not an etcd KeyValue, a nested bucket, a tree deeper than expected) it
 * returns None and the caller walks the file again with the pure-Python reader, which names what
 * it finds or, for a sound but unusual file, reads it. So both readers accept exactly the same
 * files and give the same figures; this one is only faster on the common case.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HEADER 16
#define ELEMENT 16
#define BRANCH_PAGE 0x01
#define LEAF_PAGE 0x02
#define FIRST_DATA_PAGE 2
#define UNSEEN 0
#define HEAD 1
#define CONTINUATION 2
#define READ_AHEAD (128 * 1024)
#define MAX_DEPTH 64
#define REVISION_KEY_SIZE 17
#define TOMBSTONE 't'
#define KEY_TAG 0x0A

enum { WALK_OK = 0, WALK_STOP, WALK_UNUSUAL, WALK_ERROR };

/* The user keys alive so far, when only their number is wanted (verify, in every cycle): a
 * fingerprint per key instead of the key, 8 bytes in an open-addressed table instead of a bytes
 * object and a dict entry. The slot holds Python's own hash of the bytes, SipHash keyed at random
 * per process, so no file can be made to collide; the top bits of the key's CRC-32C choose one of
 * PARTS tables and are not stored, so two keys are taken for one only when 70 bits agree (for a
 * million live keys, less than one chance in a billion that the count is one short). The parts
 * grow one at a time, by a quarter, so that growing never holds two copies of the whole table and
 * a table just grown is not half empty. The empty key, a revision bump's marker, is tracked apart:
 * etcdutl 3.6 counts it, the live-key figure does not.
 */
typedef uint64_t Print; /* never 0, which marks an empty slot */

typedef struct {
    Print *slots;
    size_t capacity;
    size_t count;
} Part;

#define PART_BITS 6
#define PARTS (1 << PART_BITS)
#define GROWTH 4 /* a part grows by 1/GROWTH */
#define FULL_NUMERATOR 17 /* and when more than 17/20 of its slots are taken */
#define FULL_DENOMINATOR 20
#define FIRST_CAPACITY 256

static size_t map_page = 4096;

typedef struct {
    Part parts[PARTS];
    size_t count;
    int bump;
} KeySet;

/* the slot a fingerprint starts from: a multiplication, where a division by the capacity would
 * cost as much again as the rest of a lookup, and the rehashing of a part that grows */
static size_t home_of(const Part *part, Print print)
{
#ifdef __SIZEOF_INT128__
    return (size_t)(((unsigned __int128)print * part->capacity) >> 64);
#else
    return (size_t)(print % part->capacity);
#endif
}

/* A part's slots are a mapping of their own, not a block of the heap: the heap would keep the
 * sizes a part outgrew, in holes no later, larger part fits, and keep them after the walk. */
static Print *slots_map(size_t capacity)
{
    void *slots = mmap(NULL, capacity * sizeof(Print), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return slots == MAP_FAILED ? NULL : slots;
}

static void slots_unmap(Print *slots, size_t capacity)
{
    if (slots != NULL)
        munmap(slots, capacity * sizeof(Print));
}

/* a part's next capacity: a quarter more, and all the slots of the whole pages that takes */
static size_t next_capacity(size_t capacity)
{
    size_t wanted = capacity ? capacity + capacity / GROWTH : FIRST_CAPACITY;
    size_t bytes = (wanted * sizeof(Print) + map_page - 1) / map_page * map_page;
    return bytes / sizeof(Print);
}

static int part_grow(Part *part)
{
    size_t capacity = next_capacity(part->capacity);
    Print *slots = slots_map(capacity);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Part grown = {slots, capacity, part->count};
    for (size_t i = 0; i < part->capacity; i++) {
        Print print = part->slots[i];
        if (print == 0)
            continue;
        size_t at = home_of(&grown, print);
        while (slots[at] != 0)
            at = at + 1 == capacity ? 0 : at + 1;
        slots[at] = print;
    }
    slots_unmap(part->slots, part->capacity);
    *part = grown;
    return 0;
}

static int keyset_put(KeySet *set, Part *part, Print print)
{
    if ((part->count + 1) * FULL_DENOMINATOR > part->capacity * FULL_NUMERATOR &&
        part_grow(part) < 0)
        return -1;
    size_t at = home_of(part, print);
    while (part->slots[at] != 0) {
        if (part->slots[at] == print)
            return 0;
        at = at + 1 == part->capacity ? 0 : at + 1;
    }
    part->slots[at] = print;
    part->count++;
    set->count++;
    return 0;
}

/* linear probing's deletion by shifting back the entries after the hole */
static void keyset_drop(KeySet *set, Part *part, Print print)
{
    size_t capacity = part->capacity;
    if (capacity == 0)
        return;
    size_t at = home_of(part, print);
    while (part->slots[at] != print) {
        if (part->slots[at] == 0)
            return;
        at = at + 1 == capacity ? 0 : at + 1;
    }
    size_t hole = at;
    for (size_t next = hole + 1 == capacity ? 0 : hole + 1; part->slots[next] != 0;
         next = next + 1 == capacity ? 0 : next + 1) {
        size_t home = home_of(part, part->slots[next]);
        /* the entry may fill the hole unless its home lies cyclically in (hole, next] */
        if ((next + capacity - home) % capacity >= (next + capacity - hole) % capacity) {
            part->slots[hole] = part->slots[next];
            hole = next;
        }
    }
    part->slots[hole] = 0;
    part->count--;
    set->count--;
}

static void keyset_free(KeySet *set)
{
    for (int i = 0; i < PARTS; i++)
        slots_unmap(set->parts[i].slots, set->parts[i].capacity);
}

/* The user keys alive so far, when their names are wanted (inspect --keys-only): each name once,
 * with whether it is alive, in an arena in the order the names first appear, and an
 * open-addressed index of the arena holding each name's hash, so that a lookup reads one slot and
 * one name. A Python dict of bytes costs a bytes object per record and three dependent cache
 * misses per lookup; on a database of leases, each key written five times, that was most of the
 * walk. A deleted name stays in the arena, marked dead, and is alive again when put again. The
 * hash is Python's own hash of bytes (SipHash, keyed at random per process), so no file can be
 * made to collide. */
typedef struct {
    uint64_t hash;
    uint64_t at; /* 1 + the name's offset in the arena; 0 marks an empty slot */
} NameSlot;

/* an arena entry: the name's length (4 bytes, native order), 1 if alive, then the name */
#define NAME_HEAD 5

typedef struct {
    NameSlot *slots;
    size_t capacity; /* a power of two */
    size_t used;
    uint8_t *arena;
    size_t arena_len;
    size_t arena_cap;
} NameSet;

static uint32_t name_length(const uint8_t *entry)
{
    uint32_t length;
    memcpy(&length, entry, 4);
    return length;
}

/* -1: out of memory, with no exception set (the walk may not hold the GIL) */
static int names_resize(NameSet *set, size_t capacity)
{
    NameSlot *slots = calloc(capacity, sizeof(NameSlot));
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < set->capacity; i++) {
        NameSlot slot = set->slots[i];
        if (slot.at == 0)
            continue;
        size_t at = slot.hash & (capacity - 1);
        while (slots[at].at != 0)
            at = (at + 1) & (capacity - 1);
        slots[at] = slot;
    }
    free(set->slots);
    set->slots = slots;
    set->capacity = capacity;
    return 0;
}

/* the arena entry of `name`, or NULL and the empty slot where it would go */
static uint8_t *names_find(const NameSet *set, uint64_t hash, const uint8_t *name,
                           uint32_t length, size_t *empty)
{
    size_t mask = set->capacity - 1;
    for (size_t at = hash & mask;; at = (at + 1) & mask) {
        NameSlot slot = set->slots[at];
        if (slot.at == 0) {
            *empty = at;
            return NULL;
        }
        uint8_t *entry = set->arena + (slot.at - 1);
        if (slot.hash == hash && name_length(entry) == length &&
            memcmp(entry + NAME_HEAD, name, length) == 0)
            return entry;
    }
}

/* -1: out of memory, with no exception set */
static int names_put(NameSet *set, uint64_t hash, const uint8_t *name, uint32_t length)
{
    size_t empty;
    uint8_t *entry = names_find(set, hash, name, length, &empty);
    if (entry != NULL) {
        entry[4] = 1;
        return 0;
    }
    size_t need = set->arena_len + NAME_HEAD + length;
    if (need > set->arena_cap) {
        size_t capacity = set->arena_cap ? set->arena_cap * 2 : 64 * 1024;
        while (capacity < need)
            capacity *= 2;
        uint8_t *grown = realloc(set->arena, capacity);
        if (grown == NULL)
            return -1;
        set->arena = grown;
        set->arena_cap = capacity;
    }
    entry = set->arena + set->arena_len;
    memcpy(entry, &length, 4);
    entry[4] = 1;
    memcpy(entry + NAME_HEAD, name, length);
    set->slots[empty] = (NameSlot){hash, set->arena_len + 1};
    set->arena_len = need;
    set->used++;
    /* at most half full, so that a missing name is found missing after a probe or two */
    if (set->used * 2 > set->capacity)
        return names_resize(set, set->capacity * 2);
    return 0;
}

static void names_drop(NameSet *set, uint64_t hash, const uint8_t *name, uint32_t length)
{
    size_t empty;
    uint8_t *entry = names_find(set, hash, name, length, &empty);
    if (entry != NULL)
        entry[4] = 0;
}

static void names_free(NameSet *set)
{
    free(set->slots);
    free(set->arena);
}

typedef struct {
    int fd;
    uint64_t page_size;
    uint64_t pgid;
    uint8_t *seen;
    uint8_t *window;
    size_t window_len;
    uint64_t window_offset;
    uint64_t last_page;
    uint32_t crc;
    int with_crc;
    uint64_t entries;
    uint8_t *previous;
    size_t previous_len;
    size_t previous_cap;
    NameSet *names; /* the live user keys under `prefix`, or NULL to count them in `keys` */
    int nogil;         /* walking without the GIL: no exception may be set until it is back */
    int out_of_memory; /* what to raise then */
    const uint8_t *prefix;
    size_t prefix_len;
    KeySet keys;
    long long max_revision;
    uint8_t *spare; /* the block of the last leaf with overflow, for the next one */
    size_t spare_cap;
} Walk;

/* CRC-32C, continuing from `crc` as the crc32c package's crc32c(data, crc) does */
static uint32_t crc_table[256];

static uint32_t crc_soft(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_CRC_HW 1
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n)
{
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

static uint32_t (*crc32c)(uint32_t, const uint8_t *, size_t) = crc_soft;

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* bytes compare as Python compares them */
static int compare(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    int order = memcmp(a, b, alen < blen ? alen : blen);
    if (order)
        return order;
    return (alen > blen) - (alen < blen);
}

/* an allocation failed: raised now, or once the walk has the GIL back */
static void no_memory(Walk *w)
{
    if (w->nogil)
        w->out_of_memory = 1;
    else
        PyErr_NoMemory();
}

static int read_at(Walk *w, uint8_t *into, size_t size, uint64_t offset)
{
    size_t done = 0;
    while (done < size) {
        ssize_t got;
        if (w->nogil) {
            got = pread(w->fd, into + done, size - done, (off_t)(offset + done));
        } else {
            Py_BEGIN_ALLOW_THREADS
            got = pread(w->fd, into + done, size - done, (off_t)(offset + done));
            Py_END_ALLOW_THREADS
        }
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        done += (size_t)got;
    }
    return 0;
}

/* One page from the read-ahead window, which is refilled from the page on; pages are mostly in
 * key order, so a sequential walk reads the file 128 KiB at a time. */
static const uint8_t *page_at(Walk *w, uint64_t pgid)
{
    uint64_t offset = pgid * w->page_size;
    int sequential = pgid == w->last_page + 1;
    w->last_page = pgid;
    if (offset >= w->window_offset && offset + w->page_size <= w->window_offset + w->window_len)
        return w->window + (offset - w->window_offset);
    size_t size = sequential && w->page_size < READ_AHEAD ? READ_AHEAD : w->page_size;
    uint64_t end = w->pgid * w->page_size;
    if (offset + size > end)
        size = (size_t)(end - offset);
    w->window_offset = offset;
    w->window_len = 0;
    if (read_at(w, w->window, size, offset) < 0)
        return NULL;
    w->window_len = size;
    return w->window;
}

/* A block of at least `size` bytes for a page with overflow: the one the last such leaf gave back
 * when it is large enough. A fresh block for each page of 1 MiB values went back to the system
 * when freed and was faulted in again for the next page, a third of the CPU of an inspect of
 * such a database. */
static uint8_t *block(Walk *w, size_t size, size_t *capacity)
{
    if (w->spare != NULL && w->spare_cap >= size) {
        uint8_t *taken = w->spare;
        *capacity = w->spare_cap;
        w->spare = NULL;
        return taken;
    }
    /* too small: freed before the larger block is taken, never held beside it (a cycle's peak
     * RSS is counted with both, 3.5 MiB more on a database of 1 MiB values) */
    free(w->spare);
    w->spare = NULL;
    w->spare_cap = 0;
    uint8_t *fresh = malloc(size);
    if (fresh == NULL)
        no_memory(w);
    *capacity = size;
    return fresh;
}

/* keep the larger of `taken` and the spare block for the next page with overflow */
static void give_back(Walk *w, uint8_t *taken, size_t capacity)
{
    if (w->spare != NULL && w->spare_cap >= capacity) {
        free(taken);
        return;
    }
    free(w->spare);
    w->spare = taken;
    w->spare_cap = capacity;
}

static int mark(Walk *w, uint64_t first, uint64_t last)
{
    for (uint64_t n = first; n <= last; n++)
        if (w->seen[n] != UNSEEN)
            return -1;
    memset(w->seen + first, CONTINUATION, (size_t)(last - first + 1));
    w->seen[first] = HEAD;
    return 0;
}

static int keep_previous(Walk *w, const uint8_t *key, size_t len)
{
    if (len > w->previous_cap) {
        uint8_t *grown = realloc(w->previous, len);
        if (grown == NULL) {
            no_memory(w);
            return -1;
        }
        w->previous = grown;
        w->previous_cap = len;
    }
    memcpy(w->previous, key, len);
    w->previous_len = len;
    return 0;
}

static uint64_t main_revision(const uint8_t *key, size_t len)
{
    uint64_t value = 0;
    for (size_t i = 0; i < len && i < 8; i++)
        value = value << 8 | key[i];
    return value;
}

/* The user key of record `index` of a leaf of bucket `key` (status.user_key) and whether the
 * record is a put; WALK_STOP past the revision asked for. */
static int record(const Walk *w, const uint8_t *page, uint32_t index, const uint8_t **name,
                  uint64_t *length, int *put)
{
    const uint8_t *element = page + HEADER + (uint64_t)index * ELEMENT;
    uint64_t key_start = HEADER + (uint64_t)index * ELEMENT + le32(element + 4);
    uint32_t key_size = le32(element + 8);
    uint64_t start = key_start + key_size;
    uint64_t end = start + le32(element + 12);
    const uint8_t *key = page + key_start;
    *put = key_size == REVISION_KEY_SIZE;
    if (!*put && !(key_size == REVISION_KEY_SIZE + 1 && key[REVISION_KEY_SIZE] == TOMBSTONE))
        return WALK_UNUSUAL;
    if (w->max_revision >= 0 && main_revision(key, key_size) > (uint64_t)w->max_revision)
        return WALK_STOP;
    *name = page + start;
    *length = 0;
    if (end > start) {
        if (end - start < 2 || page[start] != KEY_TAG)
            return WALK_UNUSUAL;
        uint64_t at = start + 1;
        for (unsigned shift = 0;; shift += 7) {
            if (at >= end || shift > 63)
                return WALK_UNUSUAL;
            uint8_t byte = page[at++];
            if ((byte & 0x7F) && shift >= 32)
                return WALK_UNUSUAL; /* longer than any record: the pure reader says so */
            *length |= (uint64_t)(byte & 0x7F) << shift;
            if (byte < 0x80)
                break;
        }
        if (at + *length > end)
            return WALK_UNUSUAL;
        *name = page + at;
    }
    return WALK_OK;
}

/* what hash() of a bytes object of these bytes gives, without making the object */
static Py_hash_t hash_bytes(const uint8_t *p, uint64_t n)
{
#if PY_VERSION_HEX >= 0x030E0000
    return Py_HashBuffer(p, (Py_ssize_t)n);
#else
    return _Py_HashBytes(p, (Py_ssize_t)n);
#endif
}

/* Records fingerprinted ahead of their turn, so that the table slots they land in are fetched
 * from memory together rather than one miss after the other: the table of a large key space is
 * megabytes, and waiting on its slots was most of the walk. */
#define AHEAD 32

typedef struct {
    Print print;
    Part *part;
    int put;
    int empty;
} Step;

/* status.replay for records `first` to `first + n - 1` of a leaf into the fingerprint table */
static int replay_prints(Walk *w, const uint8_t *page, uint32_t first, uint32_t n)
{
    Step steps[AHEAD];
    int outcome = WALK_OK;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *name;
        uint64_t length;
        int status = record(w, page, first + i, &name, &length, &steps[i].put);
        if (status == WALK_STOP) {
            /* the records before this one still count */
            outcome = status;
            n = i;
            break;
        }
        if (status != WALK_OK)
            return status;
        Print print = (Print)hash_bytes(name, length);
        steps[i].print = print ? print : 1;
        steps[i].empty = length == 0;
        Part *part = &w->keys.parts[crc32c(0, name, (size_t)length) >> (32 - PART_BITS)];
        steps[i].part = part;
        if (part->capacity)
            __builtin_prefetch(&part->slots[home_of(part, steps[i].print)]);
    }
    for (uint32_t i = 0; i < n; i++) {
        if (steps[i].empty)
            w->keys.bump = steps[i].put;
        else if (steps[i].put) {
            if (keyset_put(&w->keys, steps[i].part, steps[i].print) < 0)
                return WALK_ERROR;
        } else
            keyset_drop(&w->keys, steps[i].part, steps[i].print);
    }
    return outcome;
}

/* status.replay for records `first` to `first + n - 1` of a leaf into the names table: the
 * records are read and hashed and their slots fetched, then the names those slots point to, then
 * the records are applied in order; the fetches are only hints, so a name put by one record of the
 * batch is found by the next. */
static int replay_names(Walk *w, const uint8_t *page, uint32_t first, uint32_t n)
{
    struct {
        const uint8_t *name;
        uint32_t length;
        int put;
        uint64_t hash;
    } steps[AHEAD];
    NameSet *set = w->names;
    int outcome = WALK_OK;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *name;
        uint64_t length;
        int put;
        int status = record(w, page, first + i, &name, &length, &put);
        if (status == WALK_STOP) {
            outcome = status;
            break;
        }
        if (status != WALK_OK)
            return status;
        /* the bump marker "" is never served, and a name's prefix never changes */
        if (length == 0 || length < w->prefix_len || memcmp(name, w->prefix, w->prefix_len) != 0)
            continue;
        uint64_t hash = (uint64_t)hash_bytes(name, length);
        steps[kept].name = name;
        steps[kept].length = (uint32_t)length;
        steps[kept].put = put;
        steps[kept].hash = hash;
        kept++;
        __builtin_prefetch(&set->slots[hash & (set->capacity - 1)]);
    }
    for (uint32_t i = 0; i < kept; i++) {
        NameSlot slot = set->slots[steps[i].hash & (set->capacity - 1)];
        if (slot.at != 0)
            __builtin_prefetch(set->arena + (slot.at - 1));
    }
    for (uint32_t i = 0; i < kept; i++) {
        if (!steps[i].put)
            names_drop(set, steps[i].hash, steps[i].name, steps[i].length);
        else if (names_put(set, steps[i].hash, steps[i].name, steps[i].length) < 0) {
            no_memory(w);
            return WALK_ERROR;
        }
    }
    return outcome;
}

static int leaf(Walk *w, const uint8_t *page, uint64_t size, uint32_t count, const uint8_t *low,
                size_t low_len, const uint8_t *high, size_t high_len)
{
    if (HEADER + (uint64_t)count * ELEMENT > size)
        return WALK_UNUSUAL;
    if (count == 0)
        return WALK_OK;
    const uint8_t *first_key = NULL, *last_key = NULL;
    size_t first_len = 0, last_len = 0;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *element = page + HEADER + (uint64_t)i * ELEMENT;
        if (le32(element) != 0)
            return WALK_UNUSUAL; /* a nested bucket or an unknown flag */
        uint64_t key_start = HEADER + (uint64_t)i * ELEMENT + le32(element + 4);
        uint32_t key_size = le32(element + 8);
        uint64_t key_end = key_start + key_size;
        uint64_t value_end = key_end + le32(element + 12);
        if (value_end > size)
            return WALK_UNUSUAL;
        const uint8_t *key = page + key_start;
        if (i && compare(key, key_size, last_key, last_len) <= 0)
            return WALK_UNUSUAL;
        if (i == 0) {
            first_key = key;
            first_len = key_size;
        }
        last_key = key;
        last_len = key_size;
    }
    if (compare(first_key, first_len, low, low_len) < 0 ||
        (high != NULL && compare(last_key, last_len, high, high_len) >= 0))
        return WALK_UNUSUAL;
    if (w->previous_len && compare(first_key, first_len, w->previous, w->previous_len) <= 0)
        return WALK_UNUSUAL;
    for (uint32_t i = 0; i < count; i += AHEAD) {
        uint32_t n = count - i < AHEAD ? count - i : AHEAD;
        int status = w->names != NULL ? replay_names(w, page, i, n) : replay_prints(w, page, i, n);
        if (status != WALK_OK)
            return status;
    }
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *element = page + HEADER + (uint64_t)i * ELEMENT;
        uint64_t key_start = HEADER + (uint64_t)i * ELEMENT + le32(element + 4);
        uint32_t key_size = le32(element + 8);
        uint64_t key_end = key_start + key_size;
        uint64_t value_end = key_end + le32(element + 12);
        if (w->with_crc) {
            w->crc = crc32c(w->crc, page + key_start, key_size);
            w->crc = crc32c(w->crc, page + key_end, (size_t)(value_end - key_end));
        }
        w->entries++;
    }
    if (keep_previous(w, last_key, last_len) < 0)
        return WALK_ERROR;
    return WALK_OK;
}

static int tree(Walk *w, uint64_t pgid, const uint8_t *low, size_t low_len, const uint8_t *high,
                size_t high_len, int depth)
{
    if (depth > MAX_DEPTH || pgid < FIRST_DATA_PAGE || pgid >= w->pgid)
        return WALK_UNUSUAL;
    const uint8_t *head = page_at(w, pgid);
    if (head == NULL)
        return WALK_UNUSUAL;
    uint16_t flags = le16(head + 8);
    uint32_t count = le16(head + 10);
    uint64_t overflow = le32(head + 12);
    if (le64(head) != pgid || pgid + overflow >= w->pgid)
        return WALK_UNUSUAL;
    if (flags != LEAF_PAGE && flags != BRANCH_PAGE)
        return WALK_UNUSUAL;
    if (mark(w, pgid, pgid + overflow) < 0)
        return WALK_UNUSUAL;
    uint64_t size = w->page_size;
    uint8_t *owned = NULL;
    size_t capacity = 0;
    const uint8_t *page = head;
    if (overflow) {
        /* read only as far as the last element reaches, as bbolt.py does */
        uint64_t span = (overflow + 1) * w->page_size;
        uint64_t table_end = HEADER + (uint64_t)count * ELEMENT;
        if (table_end > span)
            return WALK_UNUSUAL;
        owned = block(w, table_end > w->page_size ? table_end : w->page_size, &capacity);
        if (owned == NULL)
            return WALK_ERROR;
        if (table_end > w->page_size) {
            if (read_at(w, owned, table_end, pgid * w->page_size) < 0) {
                free(owned);
                return WALK_UNUSUAL;
            }
        } else {
            memcpy(owned, head, w->page_size);
        }
        uint64_t used = table_end;
        for (uint32_t i = 0; i < count; i++) {
            const uint8_t *element = owned + HEADER + (uint64_t)i * ELEMENT;
            /* leaf: flags, pos, ksize, vsize; branch: pos, ksize, pgid */
            uint64_t end = HEADER + (uint64_t)i * ELEMENT;
            if (flags == LEAF_PAGE)
                end += (uint64_t)le32(element + 4) + le32(element + 8) + le32(element + 12);
            else
                end += (uint64_t)le32(element) + le32(element + 4);
            if (end > used)
                used = end;
        }
        if (used > span) {
            free(owned);
            return WALK_UNUSUAL;
        }
        if (used > w->page_size) {
            /* the whole span is read again, so the block need not keep what it holds */
            if (used > capacity) {
                give_back(w, owned, capacity);
                owned = block(w, used, &capacity);
                if (owned == NULL)
                    return WALK_ERROR;
            }
            if (read_at(w, owned, used, pgid * w->page_size) < 0) {
                free(owned);
                return WALK_UNUSUAL;
            }
            size = used;
        }
        page = owned;
    }
    int status;
    if (flags == LEAF_PAGE) {
        status = leaf(w, page, size, count, low, low_len, high, high_len);
        if (owned != NULL)
            give_back(w, owned, capacity);
        return status;
    }
    /* a branch: its keys bound its children's, so it is kept while they are read */
    if (owned == NULL) {
        owned = malloc(size);
        if (owned == NULL) {
            no_memory(w);
            return WALK_ERROR;
        }
        memcpy(owned, head, size);
        page = owned;
    }
    status = WALK_OK;
    if (count == 0 || HEADER + (uint64_t)count * ELEMENT > size)
        status = WALK_UNUSUAL;
    for (uint32_t i = 0; status == WALK_OK && i < count; i++) {
        const uint8_t *element = page + HEADER + (uint64_t)i * ELEMENT;
        uint64_t start = HEADER + (uint64_t)i * ELEMENT + le32(element);
        if (start + le32(element + 4) > size)
            status = WALK_UNUSUAL;
        else if (i) {
            const uint8_t *before = element - ELEMENT;
            uint64_t before_start = HEADER + (uint64_t)(i - 1) * ELEMENT + le32(before);
            if (compare(page + before_start, le32(before + 4), page + start, le32(element + 4)) >= 0)
                status = WALK_UNUSUAL;
        }
    }
    if (status == WALK_OK) {
        const uint8_t *first = page + HEADER + le32(page + HEADER);
        const uint8_t *last_element = page + HEADER + (uint64_t)(count - 1) * ELEMENT;
        const uint8_t *last = last_element + le32(last_element);
        if (compare(first, le32(page + HEADER + 4), low, low_len) < 0 ||
            (high != NULL && compare(last, le32(last_element + 4), high, high_len) >= 0))
            status = WALK_UNUSUAL;
    }
    for (uint32_t i = 0; status == WALK_OK && i < count; i++) {
        const uint8_t *element = page + HEADER + (uint64_t)i * ELEMENT;
        const uint8_t *key = element + le32(element);
        const uint8_t *next_high = high;
        size_t next_high_len = high_len;
        if (i + 1 < count) {
            const uint8_t *next = element + ELEMENT;
            next_high = next + le32(next);
            next_high_len = le32(next + 4);
        }
        status = tree(w, le64(element + 8), key, le32(element + 4), next_high, next_high_len,
                      depth + 1);
    }
    free(owned);
    return status;
}

/* Walk bucket `key` from `root` with `w` set up for one kind of replay; releases `seen`. The
 * caller frees `w->previous`. */
static int walk_tree(Walk *w, Py_buffer *seen, uint64_t root)
{
    if ((unsigned long long)seen->len < w->pgid || w->page_size < 512) {
        PyBuffer_Release(seen);
        PyErr_SetString(PyExc_ValueError, "the page map does not cover the database");
        return WALK_ERROR;
    }
    w->seen = seen->buf;
    w->last_page = (uint64_t)-2;
    w->window = malloc(w->page_size > READ_AHEAD ? w->page_size : READ_AHEAD);
    int status = WALK_ERROR;
    if (w->window == NULL) {
        PyErr_NoMemory();
    } else if (w->nogil) {
        Py_BEGIN_ALLOW_THREADS
        status = tree(w, root, (const uint8_t *)"", 0, NULL, 0, 0);
        Py_END_ALLOW_THREADS
        if (w->out_of_memory)
            PyErr_NoMemory();
    } else {
        status = tree(w, root, (const uint8_t *)"", 0, NULL, 0, 0);
    }
    free(w->window);
    free(w->spare);
    PyBuffer_Release(seen);
    return status;
}

static PyObject *walk_revisions(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *names[] = {"fd", "root", "page_size", "pgid", "seen", "checksum", NULL};
    int fd;
    unsigned long long root, page_size, pgid;
    unsigned int checksum;
    Py_buffer seen;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iKKKw*I", names, &fd, &root, &page_size, &pgid,
                                     &seen, &checksum))
        return NULL;
    Walk w = {0};
    w.fd = fd;
    w.page_size = page_size;
    w.pgid = pgid;
    w.crc = checksum;
    w.with_crc = 1;
    w.max_revision = -1;
    int status = walk_tree(&w, &seen, root);
    PyObject *result = NULL;
    if (status == WALK_OK || status == WALK_STOP)
        result = Py_BuildValue("(IKy#nO)", w.crc, (unsigned long long)w.entries,
                               (const char *)(w.previous ? w.previous : (uint8_t *)""),
                               (Py_ssize_t)w.previous_len, (Py_ssize_t)w.keys.count,
                               w.keys.bump ? Py_True : Py_False);
    else if (status == WALK_UNUSUAL)
        result = Py_NewRef(Py_None);
    free(w.previous);
    keyset_free(&w.keys);
    return result;
}

static int by_name(const void *a, const void *b)
{
    const uint8_t *x = *(const uint8_t *const *)a;
    const uint8_t *y = *(const uint8_t *const *)b;
    return compare(x + NAME_HEAD, name_length(x), y + NAME_HEAD, name_length(y));
}

/* the names alive, sorted as Python sorts bytes */
static PyObject *names_sorted(const NameSet *set)
{
    const uint8_t **alive = malloc((set->used ? set->used : 1) * sizeof *alive);
    if (alive == NULL)
        return PyErr_NoMemory();
    size_t count = 0;
    int ordered = 1;
    for (size_t at = 0; at < set->arena_len; at += NAME_HEAD + name_length(set->arena + at)) {
        const uint8_t *entry = set->arena + at;
        if (!entry[4])
            continue;
        alive[count] = entry;
        if (count && ordered && by_name(&alive[count - 1], &alive[count]) > 0)
            ordered = 0;
        count++;
    }
    /* names often first appear in key order (a fill, leases renewed in turn): nothing to sort */
    if (!ordered)
        qsort(alive, count, sizeof *alive, by_name);
    PyObject *list = PyList_New((Py_ssize_t)count);
    for (size_t i = 0; list != NULL && i < count; i++) {
        PyObject *name = PyBytes_FromStringAndSize((const char *)alive[i] + NAME_HEAD,
                                                   (Py_ssize_t)name_length(alive[i]));
        if (name == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, name);
    }
    free(alive);
    return list;
}

static PyObject *live_names(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *names[] = {"fd",     "root",         "page_size", "pgid", "seen",
                            "prefix", "max_revision", NULL};
    int fd;
    unsigned long long root, page_size, pgid;
    long long max_revision;
    Py_buffer seen, prefix;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iKKKw*y*L", names, &fd, &root, &page_size,
                                     &pgid, &seen, &prefix, &max_revision))
        return NULL;
    NameSet set = {0};
    if (names_resize(&set, 1024) < 0) {
        PyBuffer_Release(&seen);
        PyBuffer_Release(&prefix);
        return PyErr_NoMemory();
    }
    Walk w = {0};
    w.fd = fd;
    w.page_size = page_size;
    w.pgid = pgid;
    w.max_revision = max_revision;
    w.names = &set;
    /* the names are C's until the walk ends: the SHA-256 of the file, in another thread, need
     * not wait for the walk to let go of the GIL between its reads, which on a busy machine,
     * the walk waiting for a CPU, it did not */
    w.nogil = 1;
    w.prefix = prefix.buf;
    w.prefix_len = (size_t)prefix.len;
    int status = walk_tree(&w, &seen, root);
    PyObject *result = NULL;
    if (status == WALK_OK || status == WALK_STOP)
        result = names_sorted(&set);
    else if (status == WALK_UNUSUAL)
        result = Py_NewRef(Py_None);
    PyBuffer_Release(&prefix);
    free(w.previous);
    names_free(&set);
    return result;
}

static PyMethodDef methods[] = {
    {"walk_revisions", (PyCFunction)(void (*)(void))walk_revisions, METH_VARARGS | METH_KEYWORDS,
     "Walk bucket `key`'s tree: (checksum, entries, last key, live keys counted, bump marker "
     "live), or None to walk it again in Python."},
    {"live_names", (PyCFunction)(void (*)(void))live_names, METH_VARARGS | METH_KEYWORDS,
     "Replay bucket `key` up to max_revision (-1: its end): the user keys alive under prefix, "
     "sorted, or None to walk it again in Python."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_walker", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__walker(void)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0)
        map_page = (size_t)page;
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[n] = c;
    }
#ifdef HAVE_CRC_HW
    if (__builtin_cpu_supports("sse4.2"))
        crc32c = crc_hw;
#endif
    return PyModule_Create(&module);
}
