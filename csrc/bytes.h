/* bytes.h: little-endian loads and stores of the on-disk format. Private. */
#ifndef ABASE_BYTES_H
#define ABASE_BYTES_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ABASE_LE16(x) __builtin_bswap16(x)
#define ABASE_LE32(x) __builtin_bswap32(x)
#define ABASE_LE64(x) __builtin_bswap64(x)
#else
#define ABASE_LE16(x) (x)
#define ABASE_LE32(x) (x)
#define ABASE_LE64(x) (x)
#endif

static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return ABASE_LE16(v); }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return ABASE_LE32(v); }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return ABASE_LE64(v); }
static inline void st16(uint8_t *p, uint16_t v) { v = ABASE_LE16(v); memcpy(p, &v, 2); }
static inline void st32(uint8_t *p, uint32_t v) { v = ABASE_LE32(v); memcpy(p, &v, 4); }
static inline void st64(uint8_t *p, uint64_t v) { v = ABASE_LE64(v); memcpy(p, &v, 8); }

/* Record header field offsets (see abase.h). */
#define R_CRC 0
#define R_LEN 4
#define R_PREV 8
#define R_HLC 16
#define R_NODE 24
#define R_NS 28
#define R_OP 32
#define R_FLAGS 33
#define R_KLEN 34
#define R_VLEN 36

#endif
