/*
 * crdt_ops.c: the operations of the fast paths on decoded states (crdt.h).
 *
 * crdt_operand builds the operand a local operation writes, the same bytes
 * as the Python operator's make_operand (or removal, for a key delete);
 * crdt_apply_local joins that operand into the key's cached state without
 * decoding it: it knows which members the operand touches, so an add, a
 * remove or an increment costs O(1) (O(nodes) for counters) whatever the
 * size of the state. Both read only what the operation needs: the writer's
 * own total, or its greatest dot and the member's dots.
 */
#include "crdt.h"

#include <stdlib.h>
#include <string.h>

/* the interval a new dot of ts claims in the context: [lo, ts.hlc] */
static int claim(const cctx *c, cts ts, uint64_t *lo)
{
    int found;
    uint64_t mx = ctx_max(c, ts.node, &found);
    if (found && mx == UINT64_MAX)
        return CR_ESTALE;
    *lo = found ? mx + 1 : 0;
    return ts.hlc < *lo ? CR_ESTALE : CR_OK;
}

static const ccount *counter_of(const cstate *s, uint32_t node)
{
    for (uint32_t i = 0; i < s->ncnt; i++)
        if (s->cnt[i].node == node)
            return &s->cnt[i];
    return NULL;
}

/* context of exactly the given dots, plus [lo, hi] of node when claim_node */
static int ctx_of(cctx *out, const cdv *d, uint32_t n, const cdot *plain, uint32_t np, int with_claim,
                  uint32_t node, uint64_t lo, uint64_t hi)
{
    memset(out, 0, sizeof(*out));
    for (uint32_t i = 0; i < n; i++)
        if (ctx_add(out, d[i].d.node, d[i].d.hlc, d[i].d.hlc) != CR_OK)
            return CR_ENOMEM;
    for (uint32_t i = 0; i < np; i++)
        if (ctx_add(out, plain[i].node, plain[i].hlc, plain[i].hlc) != CR_OK)
            return CR_ENOMEM;
    if (with_claim && ctx_add(out, node, lo, hi) != CR_OK)
        return CR_ENOMEM;
    return CR_OK;
}

static void hdr(cbuf *b, int tag)
{
    cbuf_u8(b, CR_VERSION);
    cbuf_u8(b, (uint8_t)tag);
}

/* an operand of a causal type: [wm 0x00] ctx store, the store given by
 * `kind`: 0 empty, 1 one member with one dot (ORSet/SortedSet), 2 a DotSet
 * of one dot (EWFlag), 3 a DotFun of one dot (MVRegister) */
static int causal_operand(cbuf *b, int tag, const cctx *c, int kind, const uint8_t *key, uint32_t klen,
                          cdot d, double score, const uint8_t *v, uint32_t vlen)
{
    hdr(b, tag);
    if (tag == CT_ZSET)
        cbuf_u8(b, 0); /* an operand has no watermark */
    ctx_encode(b, c);
    if (kind == 0) {
        cbuf_u8(b, 0);
    } else if (kind == 1) {
        cbuf_u8(b, 1);
        cbuf_bytes(b, key, klen);
        cbuf_u8(b, 1);
        dot_encode(b, c, d);
        if (tag == CT_ZSET) {
            uint64_t u;
            memcpy(&u, &score, 8);
            uint8_t o[8];
            for (int i = 7; i >= 0; i--, u >>= 8)
                o[i] = (uint8_t)u;
            cbuf_put(b, o, 8);
        }
    } else {
        cbuf_u8(b, 1);
        dot_encode(b, c, d);
        if (kind == 3)
            cbuf_bytes(b, v, vlen);
    }
    return b->oom ? CR_ENOMEM : CR_OK;
}

static int removal(const cstate *s, cts ts, cbuf *b)
{
    hdr(b, s->tag);
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
                cbuf_uv(b, c->p);
                cbuf_uv(b, c->n);
            } else {
                cbuf_uv(b, c->p);
            }
        }
        break;
    case CT_LWW:
        cbuf_u8(b, 1);
        cbuf_ts(b, ts);
        cbuf_u8(b, 0);
        break;
    case CT_GSET:
        cbuf_u8(b, 1);
        cbuf_ts(b, ts);
        cbuf_u8(b, 0);
        break;
    default:
        if (s->tag == CT_ZSET) {
            cbuf_u8(b, 1);
            cbuf_ts(b, ts);
        }
        ctx_encode(b, &s->ctx);
        cbuf_u8(b, 0);
    }
    return b->oom ? CR_ENOMEM : CR_OK;
}

int crdt_operand(const cstate *s, const cop *op, cts ts, cbuf *b)
{
    if (op->kind == OP_DELETE)
        return removal(s, ts, b);
    cdot me = {ts.node, ts.hlc};
    switch (s->tag) {
    case CT_LWW:
        if (op->kind != OP_SET)
            return CR_EBAD;
        hdr(b, CT_LWW);
        cbuf_u8(b, 0);
        cbuf_u8(b, 1);
        cbuf_ts(b, ts);
        cbuf_bytes(b, op->b, op->blen);
        return b->oom ? CR_ENOMEM : CR_OK;
    case CT_GSET:
        if (op->kind != OP_ADD)
            return CR_EBAD;
        hdr(b, CT_GSET);
        cbuf_u8(b, 0);
        cbuf_u8(b, 1);
        cbuf_bytes(b, op->b, op->blen);
        cbuf_ts(b, ts);
        return b->oom ? CR_ENOMEM : CR_OK;
    case CT_GC:
    case CT_PN: {
        if (op->kind != OP_INC)
            return CR_EBAD;
        const ccount *c = counter_of(s, ts.node);
        uint64_t base = c ? (op->neg ? c->n : c->p) : 0;
        hdr(b, s->tag);
        if (op->amt == 0 && (s->tag == CT_PN || base == 0)) { /* nothing counted: the empty delta */
            cbuf_u8(b, 0);
            return b->oom ? CR_ENOMEM : CR_OK;
        }
        if (op->amt > UINT64_MAX - base)
            return CR_EOVERFLOW;
        uint64_t t = base + op->amt;
        cbuf_u8(b, 1);
        cbuf_uv(b, ts.node);
        if (s->tag == CT_GC) {
            cbuf_uv(b, t);
            cbuf_u8(b, 0);
        } else {
            cbuf_uv(b, op->neg ? 0 : t);
            cbuf_uv(b, op->neg ? t : 0);
            cbuf_u8(b, 0);
            cbuf_u8(b, 0);
        }
        return b->oom ? CR_ENOMEM : CR_OK;
    }
    default:
        break;
    }
    /* causal types */
    uint64_t lo = 0;
    int claiming = op->kind == OP_SET || op->kind == OP_ADD || op->kind == OP_ENABLE;
    if (claiming && claim(&s->ctx, ts, &lo) != CR_OK)
        return CR_ESTALE;
    cctx c;
    int rc;
    if (s->tag == CT_MV) {
        if (op->kind != OP_SET)
            return CR_EBAD;
        cdot *seen = malloc(sizeof(cdot) * (s->nmv ? s->nmv : 1));
        if (!seen)
            return CR_ENOMEM;
        for (uint32_t i = 0; i < s->nmv; i++)
            seen[i] = s->mv[i].d;
        rc = ctx_of(&c, NULL, 0, seen, s->nmv, 1, ts.node, lo, ts.hlc);
        free(seen);
        if (rc == CR_OK)
            rc = causal_operand(b, CT_MV, &c, 3, NULL, 0, me, 0.0, op->b, op->blen);
    } else if (s->tag == CT_FLAG) {
        if (op->kind != OP_ENABLE && op->kind != OP_DISABLE)
            return CR_EBAD;
        rc = ctx_of(&c, NULL, 0, s->dots, s->ndots, claiming, ts.node, lo, ts.hlc);
        if (rc == CR_OK)
            rc = causal_operand(b, CT_FLAG, &c, claiming ? 2 : 0, NULL, 0, me, 0.0, NULL, 0);
    } else {
        if (op->kind != OP_ADD && op->kind != OP_REMOVE)
            return CR_EBAD;
        cmember *m = cmap_find(&s->map, op->b, op->blen);
        rc = ctx_of(&c, m ? cmember_dots(m) : NULL, m ? m->n : 0, NULL, 0, claiming, ts.node, lo, ts.hlc);
        if (rc == CR_OK)
            rc = causal_operand(b, s->tag, &c, claiming ? 1 : 0, op->b, op->blen, me, op->score, NULL, 0);
    }
    ctx_free(&c);
    return rc;
}

/* ------------------------------------------------------------ local apply */

static int apply_removal(cstate *s, cts ts)
{
    switch (s->tag) {
    case CT_GC:
    case CT_PN:
        for (uint32_t i = 0; i < s->ncnt; i++) {
            s->cnt[i].pr = s->cnt[i].p;
            s->cnt[i].nr = s->cnt[i].n;
        }
        return CR_OK;
    case CT_LWW:
    case CT_GSET:
    case CT_ZSET:
        if (!s->has_wm || cts_cmp(ts, s->wm) > 0) {
            s->wm = ts;
            s->has_wm = 1;
        }
        if (s->tag == CT_ZSET) /* the delete carries the whole context: the store empties */
            cmap_clear(&s->map);
        else
            cstate_drop_upto_wm(s);
        return CR_OK;
    case CT_MV:
        for (uint32_t i = 0; i < s->nmv; i++)
            free(s->mv[i].v);
        s->nmv = 0;
        return CR_OK;
    case CT_FLAG:
        s->ndots = 0;
        return CR_OK;
    default: /* ORSet */
        cmap_clear(&s->map);
        return CR_OK;
    }
}

int crdt_apply_local(cstate *s, const cop *op, cts ts)
{
    if (op->kind == OP_DELETE)
        return apply_removal(s, ts);
    cdot me = {ts.node, ts.hlc};
    switch (s->tag) {
    case CT_GC:
    case CT_PN: {
        if (op->amt == 0)
            return CR_OK;
        ccount *c = NULL;
        uint32_t i = 0;
        while (i < s->ncnt && s->cnt[i].node < ts.node)
            i++;
        if (i < s->ncnt && s->cnt[i].node == ts.node) {
            c = &s->cnt[i];
        } else {
            if (cstate_reserve_counters(s, s->ncnt + 1) != CR_OK)
                return CR_ENOMEM;
            memmove(&s->cnt[i + 1], &s->cnt[i], sizeof(ccount) * (s->ncnt - i));
            c = &s->cnt[i];
            memset(c, 0, sizeof(*c));
            c->node = ts.node;
            s->ncnt++;
        }
        uint64_t *t = op->neg ? &c->n : &c->p;
        if (op->amt > UINT64_MAX - *t)
            return CR_EOVERFLOW;
        *t += op->amt;
        return CR_OK;
    }
    case CT_LWW:
        if (s->has_wm && cts_cmp(ts, s->wm) <= 0)
            return CR_OK;
        if (!s->has_reg || cts_cmp(ts, s->reg) >= 0) {
            uint8_t *v = malloc(op->blen ? op->blen : 1);
            if (!v)
                return CR_ENOMEM;
            if (op->blen)
                memcpy(v, op->b, op->blen);
            if (s->has_reg && cts_cmp(ts, s->reg) == 0) { /* the same timestamp: Python keeps the max value */
                uint32_t m = op->blen < s->reg_len ? op->blen : s->reg_len;
                int c = m ? memcmp(op->b, s->reg_v, m) : 0;
                if (c < 0 || (c == 0 && op->blen <= s->reg_len)) {
                    free(v);
                    return CR_OK;
                }
            }
            free(s->reg_v);
            s->reg_v = v;
            s->reg_len = op->blen;
            s->reg = ts;
            s->has_reg = 1;
        }
        return CR_OK;
    case CT_GSET: {
        if (s->has_wm && cts_cmp(ts, s->wm) <= 0)
            return CR_OK;
        cmember *m = cmap_find(&s->map, op->b, op->blen);
        cdv v = {me, 0.0};
        if (!m) {
            if (!(m = cmap_insert_member(&s->map, op->b, op->blen)))
                return CR_ENOMEM;
            cmember_set(m, v);
        } else {
            cts old = {m->one.d.hlc, m->one.d.node};
            if (cts_cmp(ts, old) > 0)
                m->one = v;
        }
        return CR_OK;
    }
    default:
        break;
    }
    /* causal: the new dot (if any) survives, the observed ones go */
    uint64_t lo = 0;
    int claiming = op->kind == OP_SET || op->kind == OP_ADD || op->kind == OP_ENABLE;
    if (claiming) {
        if (claim(&s->ctx, ts, &lo) != CR_OK)
            return CR_ESTALE;
        if (ctx_add(&s->ctx, ts.node, lo, ts.hlc) != CR_OK)
            return CR_ENOMEM;
    }
    if (s->tag == CT_MV) {
        uint8_t *v = malloc(op->blen ? op->blen : 1);
        if (!v)
            return CR_ENOMEM;
        if (op->blen)
            memcpy(v, op->b, op->blen);
        for (uint32_t i = 0; i < s->nmv; i++)
            free(s->mv[i].v);
        if (s->capmv == 0) {
            s->mv = malloc(sizeof(cmv));
            if (!s->mv) {
                free(v);
                s->nmv = 0;
                return CR_ENOMEM;
            }
            s->capmv = 1;
        }
        s->mv[0].d = me;
        s->mv[0].v = v;
        s->mv[0].len = op->blen;
        s->nmv = 1;
        return CR_OK;
    }
    if (s->tag == CT_FLAG) {
        if (!claiming) {
            s->ndots = 0;
            return CR_OK;
        }
        if (s->capdots == 0) {
            s->dots = malloc(sizeof(cdot));
            if (!s->dots)
                return CR_ENOMEM;
            s->capdots = 1;
        }
        s->dots[0] = me;
        s->ndots = 1;
        return CR_OK;
    }
    cmember *m = cmap_find(&s->map, op->b, op->blen);
    if (!claiming || (s->has_wm && !cdot_after(me, s->wm))) {
        if (m)
            cmap_remove_member(&s->map, m);
        return CR_OK;
    }
    if (!m && !(m = cmap_insert_member(&s->map, op->b, op->blen)))
        return CR_ENOMEM;
    cdv v = {me, op->score};
    cmember_set(m, v);
    return CR_OK;
}
