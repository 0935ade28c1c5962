/*
 * crdt_codec.c: encoding primitives of the CRDT states (crdt.h), the same
 * bytes as abase_engine/crdt/_codec.py and _causal.py: varints (unsigned
 * LEB128, minimal, at most 64 bits), timestamps, causal contexts and dots.
 *
 * Readers (crd) never read past their buffer and set a sticky error on
 * anything the Python decoder refuses. Writers (cbuf) grow their buffer and
 * set a sticky out-of-memory flag instead of failing half-way.
 */
#include "crdt.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ cbuf */

void cbuf_free(cbuf *b)
{
    if (!b->ext)
        free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    b->ext = 0;
}

int cbuf_reserve(cbuf *b, size_t more)
{
    if (b->oom)
        return CR_ENOMEM;
    if (more <= b->cap - b->n)
        return CR_OK;
    if (more > SIZE_MAX / 2 - b->n) {
        b->oom = 1;
        return CR_ENOMEM;
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->n < more)
        cap *= 2;
    uint8_t *p = b->ext ? malloc(cap) : realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return CR_ENOMEM;
    }
    if (b->ext && b->n)
        memcpy(p, b->p, b->n);
    b->ext = 0;
    b->p = p;
    b->cap = cap;
    return CR_OK;
}

void cbuf_put(cbuf *b, const void *src, size_t n)
{
    if (n == 0 || (n > b->cap - b->n && cbuf_reserve(b, n) != CR_OK) || b->oom)
        return;
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

void cbuf_u8(cbuf *b, uint8_t v)
{
    if ((b->n == b->cap && cbuf_reserve(b, 1) != CR_OK) || b->oom)
        return;
    b->p[b->n++] = v;
}

void cbuf_uv(cbuf *b, uint64_t v)
{
    if ((b->cap - b->n < 10 && cbuf_reserve(b, 10) != CR_OK) || b->oom)
        return;
    while (v >= 0x80) {
        b->p[b->n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b->p[b->n++] = (uint8_t)v;
}

void cbuf_bytes(cbuf *b, const uint8_t *src, size_t n)
{
    cbuf_uv(b, n);
    cbuf_put(b, src, n);
}

void cbuf_ts(cbuf *b, cts t)
{
    cbuf_uv(b, t.hlc);
    cbuf_uv(b, t.node);
}

/* ------------------------------------------------------------ crd */

uint8_t crd_u8(crd *r)
{
    if (r->err || r->pos >= r->n) {
        r->err = 1;
        return 0;
    }
    return r->p[r->pos++];
}

uint64_t crd_uv_slow(crd *r)
{
    uint64_t x = 0;
    for (unsigned shift = 0;; shift += 7) {
        if (r->err || r->pos >= r->n) {
            r->err = 1;
            return 0;
        }
        uint8_t b = r->p[r->pos++];
        if (b < 0x80) {
            /* minimal: a multi-byte varint does not end in 0; 64 bits at most */
            if ((shift && b == 0) || (shift == 63 && b > 1)) {
                r->err = 1;
                return 0;
            }
            return x | (uint64_t)b << shift;
        }
        if (shift == 63) { /* a tenth byte that continues: too long */
            r->err = 1;
            return 0;
        }
        x |= (uint64_t)(b & 0x7F) << shift;
    }
}

const uint8_t *crd_take(crd *r, size_t n)
{
    if (r->err || n > r->n - r->pos) {
        r->err = 1;
        return NULL;
    }
    const uint8_t *p = r->p + r->pos;
    r->pos += n;
    return p;
}

const uint8_t *crd_bytes(crd *r, uint32_t *len)
{
    uint64_t n = crd_uv(r);
    if (r->err || n > r->n - r->pos || n > UINT32_MAX) {
        r->err = 1;
        *len = 0;
        return NULL;
    }
    *len = (uint32_t)n;
    return crd_take(r, (size_t)n);
}

cts crd_ts(crd *r)
{
    cts t;
    t.hlc = crd_uv(r);
    uint64_t node = crd_uv(r);
    if (node > CR_MAX_NODE)
        r->err = 1;
    t.node = (uint32_t)node;
    return t;
}

/* ------------------------------------------------------------ contexts */

void ctx_free(cctx *c)
{
    for (uint32_t i = 0; i < c->n; i++)
        if (c->v[i].cap > 1)
            free(c->v[i].heap);
    free(c->v);
    c->v = NULL;
    c->n = c->cap = 0;
}

static int cnode_reserve(cnode *c, uint32_t n)
{
    if (n <= 1 || n <= c->cap)
        return CR_OK;
    if (n > UINT32_MAX / 4)
        return CR_ENOMEM;
    uint32_t cap = c->cap > 1 ? c->cap : 2;
    while (cap < n)
        cap *= 2;
    uint64_t *p;
    if (c->cap > 1) {
        p = realloc(c->heap, (size_t)cap * 2 * sizeof(uint64_t));
        if (!p)
            return CR_ENOMEM;
    } else {
        p = malloc((size_t)cap * 2 * sizeof(uint64_t));
        if (!p)
            return CR_ENOMEM;
        memcpy(p, c->inl, sizeof(c->inl));
    }
    c->heap = p;
    c->cap = cap;
    return CR_OK;
}

int ctx_copy(cctx *dst, const cctx *src)
{
    dst->v = NULL;
    dst->n = dst->cap = 0;
    if (src->n == 0)
        return CR_OK;
    dst->v = malloc(sizeof(cnode) * src->n);
    if (!dst->v)
        return CR_ENOMEM;
    dst->cap = src->n;
    for (uint32_t i = 0; i < src->n; i++) {
        const cnode *s = &src->v[i];
        cnode *d = &dst->v[i];
        d->node = s->node;
        d->n = 0;
        d->cap = 0;
        if (cnode_reserve(d, s->n) != CR_OK) {
            dst->n = i;
            ctx_free(dst);
            return CR_ENOMEM;
        }
        memcpy(cnode_iv(d), cnode_civ(s), sizeof(uint64_t) * 2 * s->n);
        d->n = s->n;
    }
    dst->n = src->n;
    return CR_OK;
}

/* index of node in c, or the insertion point with *found = 0 */
static uint32_t ctx_find(const cctx *c, uint32_t node, int *found)
{
    uint32_t lo = 0, hi = c->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c->v[mid].node < node)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < c->n && c->v[lo].node == node;
    return lo;
}

static int iv_has(const uint64_t *iv, uint32_t n, uint64_t h)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) { /* first interval whose hi >= h */
        uint32_t mid = lo + (hi - lo) / 2;
        if (iv[2 * mid + 1] < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && iv[2 * lo] <= h;
}

int ctx_has(const cctx *c, cdot d)
{
    int found;
    uint32_t i = ctx_find(c, d.node, &found);
    return found && iv_has(cnode_civ(&c->v[i]), c->v[i].n, d.hlc);
}

uint64_t ctx_max(const cctx *c, uint32_t node, int *found)
{
    uint32_t i = ctx_find(c, node, found);
    if (!*found)
        return 0;
    return cnode_civ(&c->v[i])[2 * c->v[i].n - 1];
}

int ctx_add(cctx *c, uint32_t node, uint64_t lo, uint64_t hi)
{
    int found;
    uint32_t i = ctx_find(c, node, &found);
    if (!found) {
        if (c->n == c->cap) {
            uint32_t cap = c->cap ? c->cap * 2 : 4;
            cnode *v = realloc(c->v, sizeof(cnode) * cap);
            if (!v)
                return CR_ENOMEM;
            c->v = v;
            c->cap = cap;
        }
        memmove(&c->v[i + 1], &c->v[i], sizeof(cnode) * (c->n - i));
        cnode *x = &c->v[i];
        x->node = node;
        x->n = 1;
        x->cap = 0;
        x->inl[0] = lo;
        x->inl[1] = hi;
        c->n++;
        return CR_OK;
    }
    cnode *x = &c->v[i];
    uint64_t *iv = cnode_iv(x);
    uint32_t n = x->n;
    /* the common case: the new interval touches or follows the last one */
    if (lo >= iv[2 * n - 2] && (iv[2 * n - 1] == UINT64_MAX || lo <= iv[2 * n - 1] + 1)) {
        if (hi > iv[2 * n - 1])
            iv[2 * n - 1] = hi;
        return CR_OK;
    }
    if (iv[2 * n - 1] != UINT64_MAX && lo > iv[2 * n - 1] + 1) {
        if (cnode_reserve(x, n + 1) != CR_OK)
            return CR_ENOMEM;
        iv = cnode_iv(x);
        iv[2 * n] = lo;
        iv[2 * n + 1] = hi;
        x->n = n + 1;
        return CR_OK;
    }
    /* general: [a, b) = the intervals that touch [lo, hi]; replace them */
    uint32_t a = 0;
    while (a < n && iv[2 * a + 1] != UINT64_MAX && iv[2 * a + 1] + 1 < lo)
        a++;
    uint32_t b = a;
    while (b < n && (hi == UINT64_MAX || iv[2 * b] <= hi + 1))
        b++;
    if (a == b) { /* disjoint: insert at a */
        if (cnode_reserve(x, n + 1) != CR_OK)
            return CR_ENOMEM;
        iv = cnode_iv(x);
        memmove(&iv[2 * a + 2], &iv[2 * a], sizeof(uint64_t) * 2 * (n - a));
        iv[2 * a] = lo;
        iv[2 * a + 1] = hi;
        x->n = n + 1;
        return CR_OK;
    }
    uint64_t nlo = iv[2 * a] < lo ? iv[2 * a] : lo;
    uint64_t nhi = iv[2 * b - 1] > hi ? iv[2 * b - 1] : hi;
    iv[2 * a] = nlo;
    iv[2 * a + 1] = nhi;
    memmove(&iv[2 * a + 2], &iv[2 * b], sizeof(uint64_t) * 2 * (n - b));
    x->n = n - (b - a - 1);
    return CR_OK;
}

int ctx_union(cctx *a, const cctx *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        const cnode *x = &b->v[i];
        const uint64_t *iv = cnode_civ(x);
        for (uint32_t k = 0; k < x->n; k++)
            if (ctx_add(a, x->node, iv[2 * k], iv[2 * k + 1]) != CR_OK)
                return CR_ENOMEM;
    }
    return CR_OK;
}

int ctx_equal(const cctx *a, const cctx *b)
{
    if (a->n != b->n)
        return 0;
    for (uint32_t i = 0; i < a->n; i++) {
        if (a->v[i].node != b->v[i].node || a->v[i].n != b->v[i].n)
            return 0;
        if (memcmp(cnode_civ(&a->v[i]), cnode_civ(&b->v[i]), sizeof(uint64_t) * 2 * a->v[i].n))
            return 0;
    }
    return 1;
}

int ctx_decode(crd *r, cctx *out)
{
    out->v = NULL;
    out->n = out->cap = 0;
    uint64_t cnt = crd_uv(r);
    if (r->err || cnt > (r->n - r->pos) / 3) { /* a node takes 3 bytes at least */
        r->err = 1;
        return CR_EBAD;
    }
    if (cnt) {
        out->v = calloc((size_t)cnt, sizeof(cnode));
        if (!out->v)
            return CR_ENOMEM;
        out->cap = (uint32_t)cnt;
    }
    uint64_t prev = 0;
    for (uint64_t i = 0; i < cnt; i++) {
        uint64_t d = crd_uv(r);
        if (d > CR_MAX_NODE) {
            r->err = 1;
            break;
        }
        uint64_t node = i ? prev + d + 1 : d;
        if (node > CR_MAX_NODE)
            r->err = 1;
        prev = node;
        uint64_t k = crd_uv(r);
        if (r->err || k == 0 || k > (r->n - r->pos) / 2) {
            r->err = 1;
            break;
        }
        cnode *x = &out->v[out->n];
        x->node = (uint32_t)node;
        x->n = 0;
        x->cap = 0;
        out->n++;
        if (cnode_reserve(x, (uint32_t)k) != CR_OK) {
            ctx_free(out);
            return CR_ENOMEM;
        }
        uint64_t *iv = cnode_iv(x);
        uint64_t hi = 0;
        for (uint64_t j = 0; j < k; j++) {
            uint64_t a = crd_uv(r), s = crd_uv(r);
            uint64_t lo;
            if (j) {
                if (hi > UINT64_MAX - 2 || a > UINT64_MAX - 2 - hi) {
                    r->err = 1;
                    break;
                }
                lo = hi + 2 + a;
            } else {
                lo = a;
            }
            if (s > UINT64_MAX - lo) {
                r->err = 1;
                break;
            }
            hi = lo + s;
            iv[2 * j] = lo;
            iv[2 * j + 1] = hi;
        }
        if (r->err)
            break;
        x->n = (uint32_t)k;
    }
    if (r->err) {
        ctx_free(out);
        return CR_EBAD;
    }
    return CR_OK;
}

void ctx_encode(cbuf *b, const cctx *c)
{
    cbuf_uv(b, c->n);
    uint32_t prev = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        const cnode *x = &c->v[i];
        cbuf_uv(b, i ? (uint64_t)x->node - prev - 1 : x->node);
        prev = x->node;
        cbuf_uv(b, x->n);
        const uint64_t *iv = cnode_civ(x);
        uint64_t ph = 0;
        for (uint32_t k = 0; k < x->n; k++) {
            cbuf_uv(b, k ? iv[2 * k] - ph - 2 : iv[0]);
            cbuf_uv(b, iv[2 * k + 1] - iv[2 * k]);
            ph = iv[2 * k + 1];
        }
    }
}

/* ------------------------------------------------------------ dots */

cdot dot_decode(crd *r, const cctx *c)
{
    cdot d = {0, 0};
    uint8_t t = crd_u8(r);
    uint64_t i;
    unsigned nb;
    if (r->err)
        return d;
    if (t < 252) {
        i = t / 9;
        nb = t % 9;
    } else if (t == 0xFF) {
        i = crd_uv(r);
        nb = crd_u8(r);
        if (i < 28 || nb > 8)
            r->err = 1;
    } else {
        r->err = 1;
        return d;
    }
    if (r->err || i >= c->n) {
        r->err = 1;
        return d;
    }
    const cnode *x = &c->v[i];
    const uint64_t *iv = cnode_civ(x);
    uint64_t mx = iv[2 * x->n - 1];
    uint64_t raw = 0;
    if (nb) {
        const uint8_t *p = crd_take(r, nb);
        if (!p || p[nb - 1] == 0) {
            r->err = 1;
            return d;
        }
        for (unsigned k = nb; k-- > 0;)
            raw = raw << 8 | p[k];
        if (raw > mx) {
            r->err = 1;
            return d;
        }
    }
    uint64_t h = mx - raw;
    if (!iv_has(iv, x->n, h)) {
        r->err = 1;
        return d;
    }
    d.node = x->node;
    d.hlc = h;
    return d;
}

void dot_encode(cbuf *b, const cctx *c, cdot d)
{
    int found;
    uint32_t i = ctx_find(c, d.node, &found);
    uint64_t x = found ? cnode_civ(&c->v[i])[2 * c->v[i].n - 1] - d.hlc : 0;
    if (!found) { /* every dot of a state is in its context */
        b->oom = 1;
        return;
    }
    unsigned nb = 0;
    for (uint64_t t = x; t; t >>= 8)
        nb++;
    if (i < 28) {
        cbuf_u8(b, (uint8_t)(i * 9 + nb));
    } else {
        cbuf_u8(b, 0xFF);
        cbuf_uv(b, i);
        cbuf_u8(b, (uint8_t)nb);
    }
    for (unsigned k = 0; k < nb; k++)
        cbuf_u8(b, (uint8_t)(x >> (8 * k)));
}
