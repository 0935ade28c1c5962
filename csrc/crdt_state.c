/*
 * crdt_state.c: decoded CRDT states (crdt.h): decode, encode, join, and the
 * local operations of the fast paths. The semantics, the validation and the
 * bytes follow abase_engine/crdt exactly (see crdt/__init__.py for the
 * grammar); tests/test_crdt_c.py compares the two on random histories.
 *
 * Member sets (GSet, ORSet, SortedSet) are hash maps over a dense array of
 * members, so an add, a remove or a lookup costs O(1) whatever the size of
 * the set; members are sorted only to encode a whole state.
 */
#include "crdt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SLOT_FREE 0u
#define SLOT_DEAD UINT32_MAX

/* ------------------------------------------------------------ helpers */

static uint64_t hash_bytes(const uint8_t *p, uint32_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3ull;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    return h;
}

static int bytes_cmp(const uint8_t *a, uint32_t al, const uint8_t *b, uint32_t bl)
{
    uint32_t m = al < bl ? al : bl;
    int c = m ? memcmp(a, b, m) : 0;
    if (c)
        return c;
    return al < bl ? -1 : al > bl;
}

static uint8_t *dup_bytes(const uint8_t *p, uint32_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    if (d && n)
        memcpy(d, p, n);
    return d;
}

static int grow(void **p, uint32_t *cap, uint32_t need, size_t size)
{
    if (need <= *cap)
        return CR_OK;
    uint32_t c = *cap ? *cap : 4;
    while (c < need) {
        if (c > UINT32_MAX / 2)
            return CR_ENOMEM;
        c *= 2;
    }
    void *q = realloc(*p, (size_t)c * size);
    if (!q)
        return CR_ENOMEM;
    *p = q;
    *cap = c;
    return CR_OK;
}

static double read_f64be(const uint8_t *p)
{
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u = u << 8 | p[i];
    double d;
    memcpy(&d, &u, 8);
    return d;
}

static void put_f64be(cbuf *b, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    uint8_t o[8];
    for (int i = 7; i >= 0; i--, u >>= 8)
        o[i] = (uint8_t)u;
    cbuf_put(b, o, 8);
}

static void put_wm(cbuf *b, int has, cts wm)
{
    if (!has) {
        cbuf_u8(b, 0);
        return;
    }
    cbuf_u8(b, 1);
    cbuf_ts(b, wm);
}

static void read_wm(crd *r, int *has, cts *wm)
{
    uint8_t f = crd_u8(r);
    *has = 0;
    if (f == 1) {
        *wm = crd_ts(r);
        *has = 1;
    } else if (f != 0) {
        r->err = 1;
    }
}

/* ------------------------------------------------------------ members */

static void member_free(cmember *m)
{
    free(m->key);
    if (m->cap > 1)
        free(m->more);
}

static int member_reserve(cmember *m, uint32_t n)
{
    if (n <= 1 || n <= m->cap)
        return CR_OK;
    uint32_t cap = m->cap > 1 ? m->cap : 2;
    while (cap < n)
        cap *= 2;
    cdv *p;
    if (m->cap > 1) {
        p = realloc(m->more, sizeof(cdv) * cap);
    } else {
        p = malloc(sizeof(cdv) * cap);
        if (p && m->n)
            p[0] = m->one;
    }
    if (!p)
        return CR_ENOMEM;
    m->more = p;
    m->cap = cap;
    return CR_OK;
}

static int member_push(cmember *m, cdv v)
{
    if (member_reserve(m, m->n + 1) != CR_OK)
        return CR_ENOMEM;
    cmember_dots(m)[m->n++] = v;
    return CR_OK;
}

/* replace the member's dots by the single v */
void cmember_set(cmember *m, cdv v)
{
    if (m->cap > 1)
        free(m->more);
    m->cap = 0;
    m->n = 1;
    m->one = v;
}

void cmap_clear(cmap *m)
{
    for (uint32_t i = 0; i < m->n; i++)
        member_free(&m->e[i]);
    free(m->e);
    free(m->slot);
    memset(m, 0, sizeof(*m));
}

static uint32_t *cmap_slot_of(const cmap *m, const uint8_t *key, uint32_t klen, uint64_t h)
{
    if (!m->nslot)
        return NULL;
    uint32_t mask = m->nslot - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        uint32_t s = m->slot[i];
        if (s == SLOT_FREE)
            return NULL;
        if (s != SLOT_DEAD) {
            const cmember *e = &m->e[s - 1];
            if (e->hash == h && e->klen == klen && (klen == 0 || memcmp(e->key, key, klen) == 0))
                return &m->slot[i];
        }
    }
}

cmember *cmap_find(const cmap *m, const uint8_t *key, uint32_t klen)
{
    uint32_t *s = cmap_slot_of(m, key, klen, hash_bytes(key, klen));
    return s ? &m->e[*s - 1] : NULL;
}

static int cmap_rehash(cmap *m, uint32_t nslot)
{
    uint32_t *slot = calloc(nslot, sizeof(uint32_t));
    if (!slot)
        return CR_ENOMEM;
    uint32_t mask = nslot - 1;
    for (uint32_t k = 0; k < m->n; k++) {
        uint32_t i = (uint32_t)m->e[k].hash & mask;
        while (slot[i] != SLOT_FREE)
            i = (i + 1) & mask;
        slot[i] = k + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->nslot = nslot;
    m->used = m->n;
    return CR_OK;
}

/* A new member (absent before); its key is copied, its dots empty. */
cmember *cmap_insert_member(cmap *m, const uint8_t *key, uint32_t klen)
{
    if ((uint64_t)(m->used + 1) * 4 > (uint64_t)m->nslot * 3) {
        uint32_t ns = m->nslot ? m->nslot : 8;
        while ((uint64_t)(m->n + 1) * 2 > ns) {
            if (ns > UINT32_MAX / 2)
                return NULL;
            ns *= 2;
        }
        if (cmap_rehash(m, ns) != CR_OK)
            return NULL;
    }
    if (grow((void **)&m->e, &m->cap, m->n + 1, sizeof(cmember)) != CR_OK)
        return NULL;
    uint8_t *k = dup_bytes(key, klen);
    if (!k)
        return NULL;
    cmember *e = &m->e[m->n];
    memset(e, 0, sizeof(*e));
    e->key = k;
    e->klen = klen;
    e->hash = hash_bytes(key, klen);
    uint32_t mask = m->nslot - 1;
    uint32_t i = (uint32_t)e->hash & mask;
    while (m->slot[i] != SLOT_FREE && m->slot[i] != SLOT_DEAD)
        i = (i + 1) & mask;
    if (m->slot[i] == SLOT_FREE)
        m->used++;
    m->slot[i] = ++m->n;
    return e;
}

/* Remove member e (a pointer into m->e); the last member moves into its place. */
void cmap_remove_member(cmap *m, cmember *e)
{
    uint32_t idx = (uint32_t)(e - m->e);
    uint32_t *s = cmap_slot_of(m, e->key, e->klen, e->hash);
    if (s)
        *s = SLOT_DEAD;
    member_free(e);
    uint32_t last = m->n - 1;
    if (idx != last) {
        cmember *l = &m->e[last];
        uint32_t *ls = cmap_slot_of(m, l->key, l->klen, l->hash);
        m->e[idx] = *l;
        if (ls)
            *ls = idx + 1;
    }
    m->n--;
}

/* Members sorted by their bytes (shorter first on a common prefix, as
 * Python compares bytes): each is sorted by its first 8 bytes as a
 * big-endian integer (the byte order), then by memcmp only on a tie. */
typedef struct {
    uint64_t prefix;
    cmember *m;
} sortkey;

static int sortkey_cmp(const void *a, const void *b)
{
    const sortkey *x = a, *y = b;
    if (x->prefix != y->prefix)
        return x->prefix < y->prefix ? -1 : 1;
    return bytes_cmp(x->m->key, x->m->klen, y->m->key, y->m->klen);
}

cmember **cmap_sorted(const cmap *m)
{
    uint32_t n = m->n;
    sortkey *k = malloc(sizeof(sortkey) * (n ? n : 1));
    cmember **v = malloc(sizeof(cmember *) * (n ? n : 1));
    if (!k || !v) {
        free(k);
        free(v);
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        const cmember *e = &m->e[i];
        uint64_t p = 0;
        for (uint32_t j = 0; j < 8; j++)
            p = p << 8 | (j < e->klen ? e->key[j] : 0);
        k[i].prefix = p;
        k[i].m = &m->e[i];
    }
    qsort(k, n, sizeof(sortkey), sortkey_cmp);
    for (uint32_t i = 0; i < n; i++)
        v[i] = k[i].m;
    free(k);
    return v;
}

static int cmap_copy(cmap *dst, const cmap *src)
{
    memset(dst, 0, sizeof(*dst));
    for (uint32_t i = 0; i < src->n; i++) {
        const cmember *s = &src->e[i];
        cmember *d = cmap_insert_member(dst, s->key, s->klen);
        if (!d || member_reserve(d, s->n) != CR_OK) {
            cmap_clear(dst);
            return CR_ENOMEM;
        }
        memcpy(cmember_dots(d), s->cap > 1 ? s->more : &s->one, sizeof(cdv) * s->n);
        d->n = s->n;
    }
    return CR_OK;
}

/* ------------------------------------------------------------ lifecycle */

int crdt_supported(int tag)
{
    switch (tag) {
    case CT_LWW: case CT_MV: case CT_GC: case CT_PN: case CT_GSET: case CT_ORSET: case CT_ZSET: case CT_FLAG:
        return 1;
    default:
        return 0;
    }
}

void cstate_init(cstate *s, int tag)
{
    memset(s, 0, sizeof(*s));
    s->tag = tag;
}

int cstate_reserve_counters(cstate *s, uint32_t n)
{
    if (n <= s->capcnt)
        return CR_OK;
    if (!s->cnt && n <= 2) {
        s->cnt = s->cnt_inl;
        s->capcnt = 2;
        return CR_OK;
    }
    uint32_t cap = s->capcnt > 2 ? s->capcnt : 4;
    while (cap < n) {
        if (cap > UINT32_MAX / 2)
            return CR_ENOMEM;
        cap *= 2;
    }
    ccount *p;
    if (s->cnt == s->cnt_inl) {
        p = malloc(sizeof(ccount) * cap);
        if (p)
            memcpy(p, s->cnt_inl, sizeof(ccount) * s->ncnt);
    } else {
        p = realloc(s->cnt, sizeof(ccount) * cap);
    }
    if (!p)
        return CR_ENOMEM;
    s->cnt = p;
    s->capcnt = cap;
    return CR_OK;
}

void cstate_free(cstate *s)
{
    if (s->cnt != s->cnt_inl)
        free(s->cnt);
    free(s->reg_v);
    ctx_free(&s->ctx);
    free(s->dots);
    for (uint32_t i = 0; i < s->nmv; i++)
        free(s->mv[i].v);
    free(s->mv);
    cmap_clear(&s->map);
    cstate_init(s, s->tag);
}

int cstate_copy(cstate *dst, const cstate *src)
{
    cstate_init(dst, src->tag);
    dst->has_wm = src->has_wm;
    dst->wm = src->wm;
    dst->has_reg = src->has_reg;
    dst->reg = src->reg;
    int rc = CR_OK;
    if (src->ncnt) {
        rc = cstate_reserve_counters(dst, src->ncnt);
        if (rc == CR_OK) {
            memcpy(dst->cnt, src->cnt, sizeof(ccount) * src->ncnt);
            dst->ncnt = src->ncnt;
        }
    }
    if (rc == CR_OK && src->has_reg) {
        dst->reg_v = dup_bytes(src->reg_v, src->reg_len);
        dst->reg_len = src->reg_len;
        if (!dst->reg_v)
            rc = CR_ENOMEM;
    }
    if (rc == CR_OK)
        rc = ctx_copy(&dst->ctx, &src->ctx);
    if (rc == CR_OK && src->ndots) {
        dst->dots = malloc(sizeof(cdot) * src->ndots);
        if (!dst->dots)
            rc = CR_ENOMEM;
        else
            memcpy(dst->dots, src->dots, sizeof(cdot) * src->ndots), dst->ndots = dst->capdots = src->ndots;
    }
    if (rc == CR_OK && src->nmv) {
        dst->mv = calloc(src->nmv, sizeof(cmv));
        if (!dst->mv)
            rc = CR_ENOMEM;
        for (uint32_t i = 0; rc == CR_OK && i < src->nmv; i++) {
            dst->mv[i].d = src->mv[i].d;
            dst->mv[i].len = src->mv[i].len;
            dst->mv[i].v = dup_bytes(src->mv[i].v, src->mv[i].len);
            dst->nmv = dst->capmv = i + 1;
            if (!dst->mv[i].v)
                rc = CR_ENOMEM;
        }
    }
    if (rc == CR_OK)
        rc = cmap_copy(&dst->map, &src->map);
    if (rc != CR_OK)
        cstate_free(dst);
    return rc;
}

size_t cstate_bytes(const cstate *s)
{
    size_t n = sizeof(*s) + s->capcnt * sizeof(ccount) + s->reg_len + s->ctx.cap * sizeof(cnode) +
               s->capdots * sizeof(cdot) + s->capmv * sizeof(cmv) + s->map.cap * sizeof(cmember) +
               s->map.nslot * sizeof(uint32_t);
    for (uint32_t i = 0; i < s->nmv; i++)
        n += s->mv[i].len;
    for (uint32_t i = 0; i < s->map.n; i++)
        n += s->map.e[i].klen + (s->map.e[i].cap > 1 ? s->map.e[i].cap * sizeof(cdv) : 0);
    return n;
}

int cstate_live(const cstate *s)
{
    switch (s->tag) {
    case CT_GC:
    case CT_PN:
        for (uint32_t i = 0; i < s->ncnt; i++)
            if (s->cnt[i].p != s->cnt[i].pr || s->cnt[i].n != s->cnt[i].nr)
                return 1;
        return 0;
    case CT_LWW:
        return s->has_reg;
    case CT_MV:
        return s->nmv > 0;
    case CT_FLAG:
        return s->ndots > 0;
    default:
        return s->map.n > 0;
    }
}

/* ------------------------------------------------------------ decode */

static int decode_counters(crd *r, cstate *s)
{
    uint64_t cnt = crd_uv(r);
    if (r->err || cnt > r->n - r->pos)
        return CR_EBAD;
    if (cnt && cstate_reserve_counters(s, (uint32_t)cnt) != CR_OK)
        return CR_ENOMEM;
    uint64_t node = 0;
    for (uint64_t i = 0; i < cnt && !r->err; i++) {
        uint64_t d = crd_uv(r);
        if (d > CR_MAX_NODE || (i && node + d + 1 > CR_MAX_NODE)) {
            r->err = 1;
            break;
        }
        node = i ? node + d + 1 : d;
        ccount c = {(uint32_t)node, 0, 0, 0, 0};
        c.p = crd_uv(r);
        if (s->tag == CT_PN) {
            c.n = crd_uv(r);
            c.pr = crd_uv(r);
            c.nr = crd_uv(r);
            if ((c.p == 0 && c.n == 0) || c.pr > c.p || c.nr > c.n)
                r->err = 1;
        } else {
            c.pr = crd_uv(r);
            if (c.p == 0 || c.pr > c.p)
                r->err = 1;
        }
        s->cnt[s->ncnt++] = c;
    }
    return r->err ? CR_EBAD : CR_OK;
}

static int decode_lww(crd *r, cstate *s)
{
    read_wm(r, &s->has_wm, &s->wm);
    uint8_t f = crd_u8(r);
    if (r->err || f > 1)
        return CR_EBAD;
    if (f == 0)
        return CR_OK;
    s->reg = crd_ts(r);
    if (r->err || (s->has_wm && cts_cmp(s->reg, s->wm) <= 0))
        return CR_EBAD;
    uint32_t len;
    const uint8_t *v = crd_bytes(r, &len);
    if (r->err)
        return CR_EBAD;
    if (!(s->reg_v = dup_bytes(v, len)))
        return CR_ENOMEM;
    s->reg_len = len;
    s->has_reg = 1;
    return CR_OK;
}

static int decode_gset(crd *r, cstate *s)
{
    read_wm(r, &s->has_wm, &s->wm);
    uint64_t cnt = crd_uv(r);
    if (r->err || cnt > r->n - r->pos)
        return CR_EBAD;
    const uint8_t *prev = NULL;
    uint32_t prevlen = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        uint32_t len;
        const uint8_t *k = crd_bytes(r, &len);
        cts t = crd_ts(r);
        if (r->err || (prev && bytes_cmp(k, len, prev, prevlen) <= 0) ||
            (s->has_wm && cts_cmp(t, s->wm) <= 0))
            return CR_EBAD;
        prev = k;
        prevlen = len;
        cmember *m = cmap_insert_member(&s->map, k, len);
        if (!m)
            return CR_ENOMEM;
        cdv v = {{t.node, t.hlc}, 0.0};
        cmember_set(m, v);
    }
    return CR_OK;
}

/* u(k) dots strictly increasing, into out (growing) */
static int decode_dots(crd *r, const cctx *c, cdot **out, uint32_t *n, uint32_t *cap)
{
    uint64_t k = crd_uv(r);
    if (r->err || k > r->n - r->pos)
        return CR_EBAD;
    if (grow((void **)out, cap, (uint32_t)k, sizeof(cdot)) != CR_OK)
        return CR_ENOMEM;
    for (uint64_t i = 0; i < k; i++) {
        cdot d = dot_decode(r, c);
        if (r->err || (i && cdot_cmp(d, (*out)[i - 1]) <= 0))
            return CR_EBAD;
        (*out)[i] = d;
    }
    *n = (uint32_t)k;
    return CR_OK;
}

static int decode_causal(crd *r, cstate *s)
{
    if (s->tag == CT_ZSET)
        read_wm(r, &s->has_wm, &s->wm);
    if (r->err)
        return CR_EBAD;
    int rc = ctx_decode(r, &s->ctx);
    if (rc != CR_OK)
        return rc;
    if (s->tag == CT_FLAG)
        return decode_dots(r, &s->ctx, &s->dots, &s->ndots, &s->capdots);
    uint64_t cnt = crd_uv(r);
    if (r->err || cnt > r->n - r->pos)
        return CR_EBAD;
    if (s->tag == CT_MV) {
        if (grow((void **)&s->mv, &s->capmv, (uint32_t)cnt, sizeof(cmv)) != CR_OK)
            return CR_ENOMEM;
        for (uint64_t i = 0; i < cnt; i++) {
            cdot d = dot_decode(r, &s->ctx);
            uint32_t len;
            const uint8_t *v = crd_bytes(r, &len);
            if (r->err || (i && cdot_cmp(d, s->mv[i - 1].d) <= 0))
                return CR_EBAD;
            s->mv[i].d = d;
            s->mv[i].len = len;
            if (!(s->mv[i].v = dup_bytes(v, len)))
                return CR_ENOMEM;
            s->nmv++;
        }
        return CR_OK;
    }
    const uint8_t *prev = NULL;
    uint32_t prevlen = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        uint32_t len;
        const uint8_t *k = crd_bytes(r, &len);
        if (r->err || (prev && bytes_cmp(k, len, prev, prevlen) <= 0))
            return CR_EBAD;
        prev = k;
        prevlen = len;
        cmember *m = cmap_insert_member(&s->map, k, len);
        if (!m)
            return CR_ENOMEM;
        uint64_t nd = crd_uv(r);
        if (r->err || nd == 0 || nd > r->n - r->pos)
            return CR_EBAD;
        for (uint64_t j = 0; j < nd; j++) {
            cdv v = {dot_decode(r, &s->ctx), 0.0};
            if (s->tag == CT_ZSET) {
                const uint8_t *f = crd_take(r, 8);
                if (!f)
                    return CR_EBAD;
                v.s = read_f64be(f);
                if (isnan(v.s))
                    return CR_EBAD;
                if (s->has_wm && !cdot_after(v.d, s->wm))
                    return CR_EBAD; /* not newer than the watermark: not canonical */
            }
            if (r->err || (j && cdot_cmp(v.d, cmember_dots(m)[j - 1].d) <= 0))
                return CR_EBAD;
            if (member_push(m, v) != CR_OK)
                return CR_ENOMEM;
        }
    }
    return CR_OK;
}

int cstate_decode(const uint8_t *p, size_t n, int tag, cstate *out)
{
    cstate_init(out, tag);
    if (!crdt_supported(tag))
        return CR_EBAD;
    if (n < 2 || p[0] != CR_VERSION || p[1] != tag)
        return CR_EBAD;
    crd r = {p, n, 2, 0};
    int rc;
    if (tag == CT_GC || tag == CT_PN)
        rc = decode_counters(&r, out);
    else if (tag == CT_LWW)
        rc = decode_lww(&r, out);
    else if (tag == CT_GSET)
        rc = decode_gset(&r, out);
    else
        rc = decode_causal(&r, out);
    if (rc == CR_OK && (r.err || r.pos != r.n))
        rc = CR_EBAD;
    if (rc != CR_OK)
        cstate_free(out);
    return rc;
}

/* ------------------------------------------------------------ encode */

/* An upper bound of the encoded size of the members and their dots. */
static size_t map_bound(const cmap *m)
{
    size_t n = 10;
    for (uint32_t i = 0; i < m->n; i++)
        n += m->e[i].klen + 10 + (size_t)m->e[i].n * 28;
    return n;
}

int cstate_encode(const cstate *s, cbuf *b)
{
    if (s->map.n && cbuf_reserve(b, map_bound(&s->map) + (size_t)s->ctx.n * 40) != CR_OK)
        return CR_ENOMEM;
    cbuf_u8(b, CR_VERSION);
    cbuf_u8(b, (uint8_t)s->tag);
    switch (s->tag) {
    case CT_GC:
    case CT_PN:
        cbuf_uv(b, s->ncnt);
        for (uint32_t i = 0; i < s->ncnt; i++) {
            const ccount *c = &s->cnt[i];
            cbuf_uv(b, i ? (uint64_t)c->node - s->cnt[i - 1].node - 1 : c->node);
            cbuf_uv(b, c->p);
            if (s->tag == CT_PN) {
                cbuf_uv(b, c->n);
                cbuf_uv(b, c->pr);
                cbuf_uv(b, c->nr);
            } else {
                cbuf_uv(b, c->pr);
            }
        }
        break;
    case CT_LWW:
        put_wm(b, s->has_wm, s->wm);
        if (!s->has_reg) {
            cbuf_u8(b, 0);
        } else {
            cbuf_u8(b, 1);
            cbuf_ts(b, s->reg);
            cbuf_bytes(b, s->reg_v, s->reg_len);
        }
        break;
    case CT_GSET: {
        put_wm(b, s->has_wm, s->wm);
        cmember **v = cmap_sorted(&s->map);
        if (!v)
            return CR_ENOMEM;
        cbuf_uv(b, s->map.n);
        for (uint32_t i = 0; i < s->map.n; i++) {
            cbuf_bytes(b, v[i]->key, v[i]->klen);
            cts t = {v[i]->one.d.hlc, v[i]->one.d.node};
            cbuf_ts(b, t);
        }
        free(v);
        break;
    }
    default: {
        if (s->tag == CT_ZSET)
            put_wm(b, s->has_wm, s->wm);
        ctx_encode(b, &s->ctx);
        if (s->tag == CT_FLAG) {
            cbuf_uv(b, s->ndots);
            for (uint32_t i = 0; i < s->ndots; i++)
                dot_encode(b, &s->ctx, s->dots[i]);
        } else if (s->tag == CT_MV) {
            cbuf_uv(b, s->nmv);
            for (uint32_t i = 0; i < s->nmv; i++) {
                dot_encode(b, &s->ctx, s->mv[i].d);
                cbuf_bytes(b, s->mv[i].v, s->mv[i].len);
            }
        } else {
            cmember **v = cmap_sorted(&s->map);
            if (!v)
                return CR_ENOMEM;
            cbuf_uv(b, s->map.n);
            for (uint32_t i = 0; i < s->map.n; i++) {
                cmember *m = v[i];
                cbuf_bytes(b, m->key, m->klen);
                cbuf_uv(b, m->n);
                const cdv *d = cmember_dots(m);
                for (uint32_t j = 0; j < m->n; j++) {
                    dot_encode(b, &s->ctx, d[j].d);
                    if (s->tag == CT_ZSET)
                        put_f64be(b, d[j].s);
                }
            }
            free(v);
        }
    }
    }
    return b->oom ? CR_ENOMEM : CR_OK;
}

/* ------------------------------------------------------------ join */

static int join_counters(cstate *a, const cstate *b)
{
    /* merge two node-sorted arrays, pointwise max */
    uint32_t i = 0;
    for (uint32_t j = 0; j < b->ncnt; j++) {
        const ccount *y = &b->cnt[j];
        while (i < a->ncnt && a->cnt[i].node < y->node)
            i++;
        if (i < a->ncnt && a->cnt[i].node == y->node) {
            ccount *x = &a->cnt[i];
            x->p = x->p > y->p ? x->p : y->p;
            x->n = x->n > y->n ? x->n : y->n;
            x->pr = x->pr > y->pr ? x->pr : y->pr;
            x->nr = x->nr > y->nr ? x->nr : y->nr;
            continue;
        }
        if (cstate_reserve_counters(a, a->ncnt + 1) != CR_OK)
            return CR_ENOMEM;
        memmove(&a->cnt[i + 1], &a->cnt[i], sizeof(ccount) * (a->ncnt - i));
        a->cnt[i] = *y;
        a->ncnt++;
    }
    return CR_OK;
}

/* register order: (hlc, node, value) as Python compares the triples */
static int reg_cmp(cts t1, const uint8_t *v1, uint32_t l1, cts t2, const uint8_t *v2, uint32_t l2)
{
    int c = cts_cmp(t1, t2);
    return c ? c : bytes_cmp(v1, l1, v2, l2);
}

static void drop_reg_upto_wm(cstate *a)
{
    if (a->has_reg && a->has_wm && cts_cmp(a->reg, a->wm) <= 0) {
        free(a->reg_v);
        a->reg_v = NULL;
        a->reg_len = 0;
        a->has_reg = 0;
    }
}

static int join_lww(cstate *a, const cstate *b)
{
    if (b->has_wm && (!a->has_wm || cts_cmp(b->wm, a->wm) > 0)) {
        a->wm = b->wm;
        a->has_wm = 1;
    }
    if (b->has_reg &&
        (!a->has_reg || reg_cmp(b->reg, b->reg_v, b->reg_len, a->reg, a->reg_v, a->reg_len) > 0)) {
        uint8_t *v = dup_bytes(b->reg_v, b->reg_len);
        if (!v)
            return CR_ENOMEM;
        free(a->reg_v);
        a->reg_v = v;
        a->reg_len = b->reg_len;
        a->reg = b->reg;
        a->has_reg = 1;
    }
    drop_reg_upto_wm(a);
    return CR_OK;
}

static int wm_equal(int h1, cts w1, int h2, cts w2)
{
    return h1 == h2 && (!h1 || cts_cmp(w1, w2) == 0);
}

/* drop every member dot not newer than the watermark; members left empty go */
static void map_drop_upto(cmap *m, cts wm)
{
    for (uint32_t i = 0; i < m->n;) {
        cmember *e = &m->e[i];
        cdv *d = cmember_dots(e);
        uint32_t k = 0;
        for (uint32_t j = 0; j < e->n; j++)
            if (cdot_after(d[j].d, wm))
                d[k++] = d[j];
        e->n = k;
        if (k == 0)
            cmap_remove_member(m, e); /* the last member moved to i */
        else
            i++;
    }
}

void cstate_drop_upto_wm(cstate *s)
{
    if (!s->has_wm)
        return;
    if (s->tag == CT_LWW)
        drop_reg_upto_wm(s);
    else
        map_drop_upto(&s->map, s->wm);
}

static int join_gset(cstate *a, const cstate *b)
{
    int h1 = a->has_wm, h2 = b->has_wm;
    cts w1 = a->wm, w2 = b->wm;
    if (h2 && (!h1 || cts_cmp(w2, w1) > 0)) {
        a->wm = w2;
        a->has_wm = 1;
    }
    for (uint32_t i = 0; i < b->map.n; i++) {
        const cmember *y = &b->map.e[i];
        cmember *x = cmap_find(&a->map, y->key, y->klen);
        if (!x) {
            if (!(x = cmap_insert_member(&a->map, y->key, y->klen)))
                return CR_ENOMEM;
            cmember_set(x, y->one);
        } else {
            cts tx = {x->one.d.hlc, x->one.d.node}, ty = {y->one.d.hlc, y->one.d.node};
            if (cts_cmp(ty, tx) > 0)
                x->one = y->one;
        }
    }
    if (a->has_wm && !wm_equal(h1, w1, h2, w2))
        map_drop_upto(&a->map, a->wm);
    return CR_OK;
}

/* Join of two sorted dot lists with contexts c1 (of x) and c2 (of y): a dot
 * in both stays; one in only one list stays unless the other's context saw
 * it. `zs`: SortedSet scores (max on a tie, as Python's max). The result
 * replaces x (it has at most nx + ny dots). */
static int join_dotlist(cdv *x, uint32_t nx, const cctx *c1, const cdv *y, uint32_t ny, const cctx *c2,
                        int zs, cdv **out, uint32_t *nout)
{
    cdv *r = malloc(sizeof(cdv) * (nx + ny ? nx + ny : 1));
    if (!r)
        return CR_ENOMEM;
    uint32_t i = 0, j = 0, k = 0;
    while (i < nx || j < ny) {
        int c = i == nx ? 1 : j == ny ? -1 : cdot_cmp(x[i].d, y[j].d);
        if (c == 0) {
            cdv v = x[i];
            if (zs && !(x[i].s >= y[j].s))
                v.s = y[j].s;
            r[k++] = v;
            i++, j++;
        } else if (c < 0) {
            if (!ctx_has(c2, x[i].d))
                r[k++] = x[i];
            i++;
        } else {
            if (!ctx_has(c1, y[j].d))
                r[k++] = y[j];
            j++;
        }
    }
    *out = r;
    *nout = k;
    return CR_OK;
}

static int set_member_dots(cmember *m, const cdv *d, uint32_t n)
{
    if (n == 1) {
        cmember_set(m, d[0]);
        return CR_OK;
    }
    if (m->cap > 1)
        free(m->more);
    m->cap = 0;
    m->n = 0;
    if (member_reserve(m, n) != CR_OK)
        return CR_ENOMEM;
    memcpy(cmember_dots(m), d, sizeof(cdv) * n);
    m->n = n;
    return CR_OK;
}

static int join_map(cstate *a, const cstate *b, const cctx *c1)
{
    const cctx *c2 = &b->ctx;
    int zs = a->tag == CT_ZSET;
    /* members of a only: drop the dots b's context saw */
    if (c2->n) {
        for (uint32_t i = 0; i < a->map.n;) {
            cmember *x = &a->map.e[i];
            if (cmap_find(&b->map, x->key, x->klen)) {
                i++;
                continue;
            }
            cdv *d = cmember_dots(x);
            uint32_t k = 0;
            for (uint32_t j = 0; j < x->n; j++)
                if (!ctx_has(c2, d[j].d))
                    d[k++] = d[j];
            x->n = k;
            if (k == 0)
                cmap_remove_member(&a->map, x);
            else
                i++;
        }
    }
    for (uint32_t i = 0; i < b->map.n; i++) {
        const cmember *y = &b->map.e[i];
        const cdv *yd = y->cap > 1 ? y->more : &y->one;
        cmember *x = cmap_find(&a->map, y->key, y->klen);
        cdv *r;
        uint32_t nr;
        int rc = join_dotlist(x ? cmember_dots(x) : NULL, x ? x->n : 0, c1, yd, y->n, c2, zs, &r, &nr);
        if (rc != CR_OK)
            return rc;
        if (nr == 0) {
            if (x)
                cmap_remove_member(&a->map, x);
        } else {
            if (!x && !(x = cmap_insert_member(&a->map, y->key, y->klen)))
                rc = CR_ENOMEM;
            if (rc == CR_OK)
                rc = set_member_dots(x, r, nr);
        }
        free(r);
        if (rc != CR_OK)
            return rc;
    }
    return CR_OK;
}

static int join_flag(cstate *a, const cstate *b, const cctx *c1)
{
    uint32_t nx = a->ndots, ny = b->ndots;
    cdot *r = malloc(sizeof(cdot) * (nx + ny ? nx + ny : 1));
    if (!r)
        return CR_ENOMEM;
    uint32_t i = 0, j = 0, k = 0;
    while (i < nx || j < ny) {
        int c = i == nx ? 1 : j == ny ? -1 : cdot_cmp(a->dots[i], b->dots[j]);
        if (c == 0) {
            r[k++] = a->dots[i];
            i++, j++;
        } else if (c < 0) {
            if (!ctx_has(&b->ctx, a->dots[i]))
                r[k++] = a->dots[i];
            i++;
        } else {
            if (!ctx_has(c1, b->dots[j]))
                r[k++] = b->dots[j];
            j++;
        }
    }
    free(a->dots);
    a->dots = r;
    a->ndots = k;
    a->capdots = nx + ny ? nx + ny : 1;
    return CR_OK;
}

static int join_mv(cstate *a, const cstate *b, const cctx *c1)
{
    uint32_t nx = a->nmv, ny = b->nmv;
    cmv *r = malloc(sizeof(cmv) * (nx + ny ? nx + ny : 1));
    if (!r)
        return CR_ENOMEM;
    uint32_t i = 0, j = 0, k = 0;
    int rc = CR_OK;
    while (i < nx || j < ny) {
        int c = i == nx ? 1 : j == ny ? -1 : cdot_cmp(a->mv[i].d, b->mv[j].d);
        const cmv *take = NULL;
        int from_a = 0;
        if (c == 0) {
            /* the same write on both sides: Python keeps the max of the values */
            if (bytes_cmp(a->mv[i].v, a->mv[i].len, b->mv[j].v, b->mv[j].len) >= 0)
                take = &a->mv[i], from_a = 1;
            else
                take = &b->mv[j];
            i++, j++;
        } else if (c < 0) {
            if (!ctx_has(&b->ctx, a->mv[i].d))
                take = &a->mv[i], from_a = 1;
            i++;
        } else {
            if (!ctx_has(c1, b->mv[j].d))
                take = &b->mv[j];
            j++;
        }
        if (!take)
            continue;
        r[k].d = take->d;
        r[k].len = take->len;
        r[k].v = dup_bytes(take->v, take->len);
        if (!r[k].v)
            rc = CR_ENOMEM;
        k++;
        (void)from_a;
        if (rc != CR_OK)
            break;
    }
    if (rc != CR_OK) {
        for (uint32_t t = 0; t < k; t++)
            free(r[t].v);
        free(r);
        return rc;
    }
    for (uint32_t t = 0; t < nx; t++)
        free(a->mv[t].v);
    free(a->mv);
    a->mv = r;
    a->nmv = k;
    a->capmv = nx + ny ? nx + ny : 1;
    return CR_OK;
}

int cstate_join(cstate *a, const cstate *b)
{
    if (a->tag != b->tag)
        return CR_EBAD;
    switch (a->tag) {
    case CT_GC:
    case CT_PN:
        return join_counters(a, b);
    case CT_LWW:
        return join_lww(a, b);
    case CT_GSET:
        return join_gset(a, b);
    default:
        break;
    }
    /* causal: the store joins against both original contexts, then the
     * contexts unite; SortedSet drops what a newer watermark covers */
    cctx c1;
    int rc = ctx_copy(&c1, &a->ctx);
    if (rc != CR_OK)
        return rc;
    if (a->tag == CT_FLAG)
        rc = join_flag(a, b, &c1);
    else if (a->tag == CT_MV)
        rc = join_mv(a, b, &c1);
    else
        rc = join_map(a, b, &c1);
    ctx_free(&c1);
    if (rc == CR_OK)
        rc = ctx_union(&a->ctx, &b->ctx);
    if (rc == CR_OK && a->tag == CT_ZSET) {
        int h1 = a->has_wm;
        cts w1 = a->wm;
        if (b->has_wm && (!a->has_wm || cts_cmp(b->wm, a->wm) > 0)) {
            a->wm = b->wm;
            a->has_wm = 1;
        }
        if (a->has_wm && !wm_equal(h1, w1, b->has_wm, b->wm))
            map_drop_upto(&a->map, a->wm);
    }
    return rc;
}

/* s ⊔= one counter entry c (node-sorted insert or pointwise max). */
static int counter_max_into(cstate *s, const ccount *c)
{
    uint32_t lo = 0, hi = s->ncnt;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->cnt[mid].node < c->node)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < s->ncnt && s->cnt[lo].node == c->node) {
        ccount *x = &s->cnt[lo];
        x->p = x->p > c->p ? x->p : c->p;
        x->n = x->n > c->n ? x->n : c->n;
        x->pr = x->pr > c->pr ? x->pr : c->pr;
        x->nr = x->nr > c->nr ? x->nr : c->nr;
        return CR_OK;
    }
    if (cstate_reserve_counters(s, s->ncnt + 1) != CR_OK)
        return CR_ENOMEM;
    memmove(&s->cnt[lo + 1], &s->cnt[lo], sizeof(ccount) * (s->ncnt - lo));
    s->cnt[lo] = *c;
    s->ncnt++;
    return CR_OK;
}

/* cstate_join_bytes of a counter: the entries joined as they are read,
 * with decode_counters' checks (no temporary state). */
static int join_counter_bytes(cstate *s, crd *r)
{
    uint64_t cnt = crd_uv(r);
    if (r->err || cnt > r->n - r->pos)
        return CR_EBAD;
    uint64_t node = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        uint64_t d = crd_uv(r);
        if (d > CR_MAX_NODE || (i && node + d + 1 > CR_MAX_NODE))
            return CR_EBAD;
        node = i ? node + d + 1 : d;
        ccount c = {(uint32_t)node, 0, 0, 0, 0};
        c.p = crd_uv(r);
        if (s->tag == CT_PN) {
            c.n = crd_uv(r);
            c.pr = crd_uv(r);
            c.nr = crd_uv(r);
            if ((c.p == 0 && c.n == 0) || c.pr > c.p || c.nr > c.n)
                r->err = 1;
        } else {
            c.pr = crd_uv(r);
            if (c.p == 0 || c.pr > c.p)
                r->err = 1;
        }
        if (r->err)
            return CR_EBAD;
        if (counter_max_into(s, &c) != CR_OK)
            return CR_ENOMEM;
    }
    return r->pos == r->n ? CR_OK : CR_EBAD;
}

int cstate_join_bytes(cstate *s, const uint8_t *p, size_t n)
{
    if (s->tag == CT_GC || s->tag == CT_PN) {
        if (n < 2 || p[0] != CR_VERSION || p[1] != s->tag)
            return CR_EBAD;
        crd r = {p, n, 2, 0};
        return join_counter_bytes(s, &r);
    }
    cstate b;
    int rc = cstate_decode(p, n, s->tag, &b);
    if (rc != CR_OK)
        return rc;
    rc = cstate_join(s, &b);
    cstate_free(&b);
    return rc;
}
