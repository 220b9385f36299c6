/*
 * filter, in C: drops or rewrites messages by rules from its configuration,
 * like the Rust `filter` plugin (same configuration, same behaviour), and
 * counts the messages it dropped per session in the session store
 * (`filter.dropped`).
 *
 *   [config]
 *   blocked = ["forbidden"]            # case-insensitive substrings: drop
 *   patterns = ['^DROP ']              # regular expressions: drop
 *   max_size = 65536                   # bytes; larger UTF-8/binary: drop
 *   [[config.redact]]                  # rewrite instead of dropping
 *   pattern = '[0-9]{4}-[0-9]{4}'
 *   replacement = "[redacted]"
 *
 * Regular expressions are POSIX extended ones (wasi-libc's regcomp), plus
 * the shorthands \d \w \s (and \D \W \S), translated here; \b is not
 * supported. A `$1`-style group reference in a replacement is inserted
 * as written.
 */
#include <ctype.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "camp_plugin.h"

#define MAX_RULES 64

static char *blocked[MAX_RULES];
static size_t n_blocked;
static regex_t patterns[MAX_RULES];
static size_t n_patterns;
static regex_t redact[MAX_RULES];
static char *replacement[MAX_RULES];
static size_t n_redact;
static long long max_size = -1;
static bool configured;
static char error[256];

/* ---- a small JSON reader for the configuration ---- */

typedef struct {
    const char *p, *end;
} reader;

static void skip(reader *r) {
    while (r->p < r->end && isspace((unsigned char)*r->p)) r->p++;
}

static bool eat(reader *r, char c) {
    skip(r);
    if (r->p < r->end && *r->p == c) {
        r->p++;
        return true;
    }
    return false;
}

/* A JSON string as a malloc'd C string, or NULL. */
static char *string(reader *r) {
    if (!eat(r, '"')) return NULL;
    size_t cap = 16, len = 0;
    char *out = malloc(cap);
    while (r->p < r->end && *r->p != '"') {
        char c = *r->p++;
        if (c == '\\' && r->p < r->end) {
            char e = *r->p++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned v = 0;
                for (int i = 0; i < 4 && r->p < r->end; i++) {
                    char h = *r->p++;
                    v = v * 16 + (isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
                }
                c = v < 0x80 ? (char)v : '?';
                break;
            }
            default: c = e;
            }
        }
        if (len + 2 > cap) out = realloc(out, cap *= 2);
        out[len++] = c;
    }
    if (!eat(r, '"')) {
        free(out);
        return NULL;
    }
    out[len] = 0;
    return out;
}

/* Translates \d \w \s (and their negations) for POSIX regcomp. */
static char *posix(const char *re) {
    size_t n = strlen(re);
    char *out = malloc(n * 12 + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (re[i] == '\\' && i + 1 < n && strchr("dwsDWS", re[i + 1])) {
            const char *class = "";
            switch (re[++i]) {
            case 'd': class = "[0-9]"; break;
            case 'D': class = "[^0-9]"; break;
            case 'w': class = "[[:alnum:]_]"; break;
            case 'W': class = "[^[:alnum:]_]"; break;
            case 's': class = "[[:space:]]"; break;
            case 'S': class = "[^[:space:]]"; break;
            }
            o = stpcpy(o, class);
        } else {
            *o++ = re[i];
        }
    }
    *o = 0;
    return out;
}

static const char *compile(regex_t *into, const char *pattern) {
    char *translated = posix(pattern);
    int rc = regcomp(into, translated, REG_EXTENDED);
    free(translated);
    if (rc != 0) {
        char why[128];
        regerror(rc, into, why, sizeof why);
        snprintf(error, sizeof error, "invalid pattern \"%s\": %s", pattern, why);
        return error;
    }
    return NULL;
}

static const char *bad(const char *what) {
    snprintf(error, sizeof error, "invalid filter config: %s", what);
    return error;
}

static const char *string_array(reader *r, char **into, size_t *count, bool regex,
                                regex_t *compiled) {
    if (!eat(r, '[')) return bad("expected an array of strings");
    if (eat(r, ']')) return NULL;
    do {
        char *s = string(r);
        if (s == NULL) return bad("expected a string");
        if (*count == MAX_RULES) return bad("too many rules");
        if (regex) {
            const char *e = compile(&compiled[*count], s);
            free(s);
            if (e) return e;
        } else {
            for (char *c = s; *c; c++) *c = (char)tolower((unsigned char)*c);
            into[*count] = s;
        }
        (*count)++;
    } while (eat(r, ','));
    return eat(r, ']') ? NULL : bad("expected ]");
}

static const char *redactions(reader *r) {
    if (!eat(r, '[')) return bad("redact: expected an array");
    if (eat(r, ']')) return NULL;
    do {
        if (!eat(r, '{')) return bad("redact: expected a table");
        char *pattern = NULL, *with = NULL;
        if (!eat(r, '}')) {
            do {
                char *key = string(r);
                if (key == NULL || !eat(r, ':')) return bad("redact: expected a key");
                char *value = string(r);
                if (value == NULL) return bad("redact: expected a string");
                if (strcmp(key, "pattern") == 0) pattern = value;
                else if (strcmp(key, "replacement") == 0) with = value;
                else {
                    snprintf(error, sizeof error, "invalid filter config: unknown field `%s`", key);
                    return error;
                }
                free(key);
            } while (eat(r, ','));
            if (!eat(r, '}')) return bad("redact: expected }");
        }
        if (pattern == NULL) return bad("redact: missing field `pattern`");
        if (n_redact == MAX_RULES) return bad("too many rules");
        const char *e = compile(&redact[n_redact], pattern);
        free(pattern);
        if (e) return e;
        replacement[n_redact++] = with ? with : strdup("[redacted]");
    } while (eat(r, ','));
    return eat(r, ']') ? NULL : bad("expected ]");
}

static const char *on_register(camp_str config) {
    reader r = {config.ptr, config.ptr + config.len};
    skip(&r);
    configured = true;
    if (r.p == r.end) return NULL;
    if (!eat(&r, '{')) return bad("expected a table");
    if (eat(&r, '}')) return NULL;
    do {
        char *key = string(&r);
        if (key == NULL || !eat(&r, ':')) return bad("expected a key");
        const char *e = NULL;
        if (strcmp(key, "blocked") == 0) {
            e = string_array(&r, blocked, &n_blocked, false, NULL);
        } else if (strcmp(key, "patterns") == 0) {
            e = string_array(&r, NULL, &n_patterns, true, patterns);
        } else if (strcmp(key, "max_size") == 0) {
            skip(&r);
            char *after;
            max_size = strtoll(r.p, &after, 10);
            if (after == r.p || max_size < 0) e = bad("max_size: expected a number");
            r.p = after;
        } else if (strcmp(key, "redact") == 0) {
            e = redactions(&r);
        } else {
            snprintf(error, sizeof error, "invalid filter config: unknown field `%s`", key);
            e = error;
        }
        free(key);
        if (e) return e;
    } while (eat(&r, ','));
    return eat(&r, '}') ? NULL : bad("expected }");
}

/* ---- the rules ---- */

static camp_action dropped(camp_session s, const char *why) {
    char *old = camp_session_get(s, "filter.dropped");
    long long n = old ? atoll(old) : 0;
    free(old);
    char count[24];
    snprintf(count, sizeof count, "%lld", n + 1);
    camp_session_set(s, "filter.dropped", count);
    camp_log(CAMP_DEBUG, "dropped a message of session %llu: %s",
             (unsigned long long)camp_session_id(s), why);
    return camp_drop();
}

static bool contains_lower(const char *text, const char *word) {
    size_t n = strlen(word);
    for (const char *p = text; *p; p++)
        if (strncmp(p, word, n) == 0) return true;
    return n == 0;
}

static camp_action text_hook(camp_session s, camp_str text) {
    if (!configured) return camp_pass();
    if (max_size >= 0 && (long long)text.len > max_size) return dropped(s, "too large");
    char *z = malloc(text.len + 1), *lower = malloc(text.len + 1);
    memcpy(z, text.ptr, text.len);
    z[text.len] = 0;
    for (size_t i = 0; i <= text.len; i++) lower[i] = (char)tolower((unsigned char)z[i]);
    const char *why = NULL;
    for (size_t i = 0; i < n_blocked && !why; i++)
        if (contains_lower(lower, blocked[i])) why = "blocked word";
    for (size_t i = 0; i < n_patterns && !why; i++)
        if (regexec(&patterns[i], z, 0, NULL, 0) == 0) why = "blocked pattern";
    free(lower);
    if (why) {
        free(z);
        return dropped(s, why);
    }
    bool changed = false;
    for (size_t i = 0; i < n_redact; i++) {
        size_t cap = strlen(z) + 64, len = 0;
        char *out = malloc(cap);
        const char *p = z;
        regmatch_t m;
        int flags = 0;
        while (*p && regexec(&redact[i], p, 1, &m, flags) == 0) {
            size_t with = strlen(replacement[i]);
            size_t step = m.rm_eo > m.rm_so ? (size_t)m.rm_eo : (size_t)m.rm_so + 1;
            size_t need = len + (size_t)m.rm_so + with + (step - (size_t)m.rm_eo) + 1;
            if (need > cap) out = realloc(out, cap = need * 2);
            memcpy(out + len, p, m.rm_so);
            len += m.rm_so;
            memcpy(out + len, replacement[i], with);
            len += with;
            if (m.rm_eo == m.rm_so) out[len++] = p[m.rm_so]; /* empty match */
            p += step;
            flags = REG_NOTBOL;
            changed = true;
        }
        size_t rest = strlen(p);
        if (len + rest + 1 > cap) out = realloc(out, len + rest + 1);
        memcpy(out + len, p, rest + 1);
        free(z);
        z = out;
    }
    camp_action a = changed ? camp_replace_utf8(z, strlen(z)) : camp_pass();
    free(z);
    return a;
}

static camp_action binary_hook(camp_session s, camp_bytes data) {
    if (configured && max_size >= 0 && (long long)data.len > max_size)
        return dropped(s, "too large");
    return camp_pass();
}

CAMP_PLUGIN(.name = "filter",
            .hooks = CAMP_HOOK_BEFORE_SEND_UTF8 | CAMP_HOOK_BEFORE_SEND_BINARY |
                     CAMP_HOOK_ON_RECEIVE_UTF8 | CAMP_HOOK_ON_RECEIVE_BINARY,
            .on_register = on_register,
            .before_send_utf8 = text_hook, .before_send_binary = binary_hook,
            .on_receive_utf8 = text_hook, .on_receive_binary = binary_hook);
