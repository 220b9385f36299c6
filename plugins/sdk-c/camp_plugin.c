/* The exports of the `plugin` world, implemented from a camp_plugin
 * description (see camp_plugin.h). */
#include "camp_plugin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static plugin_string_t borrowed(const char *s) {
    plugin_string_t out = {(uint8_t *)s, strlen(s)};
    return out;
}

camp_action camp_pass(void) {
    camp_action a = {.tag = CAMP_EXTENSION_TYPES_ACTION_PASS};
    return a;
}

camp_action camp_drop(void) {
    camp_action a = {.tag = CAMP_EXTENSION_TYPES_ACTION_DROP};
    return a;
}

static uint8_t *copy(const void *data, size_t len) {
    if (len == 0) return NULL;
    uint8_t *p = malloc(len);
    if (p == NULL) abort();
    memcpy(p, data, len);
    return p;
}

static camp_action replace(uint8_t kind, const void *data, size_t len) {
    camp_action a = {.tag = CAMP_EXTENSION_TYPES_ACTION_REPLACE};
    a.val.replace.tag = kind;
    /* utf8, binary and error share one layout: pointer, length. The
     * buffer is freed by the generated post-return function. */
    a.val.replace.val.utf8.ptr = copy(data, len);
    a.val.replace.val.utf8.len = len;
    return a;
}

camp_action camp_replace_utf8(const char *text, size_t len) {
    return replace(CAMP_EXTENSION_TYPES_PAYLOAD_UTF8, text, len);
}

camp_action camp_replace_binary(const uint8_t *data, size_t len) {
    return replace(CAMP_EXTENSION_TYPES_PAYLOAD_BINARY, data, len);
}

camp_action camp_replace_error(const char *text, size_t len) {
    return replace(CAMP_EXTENSION_TYPES_PAYLOAD_ERROR, text, len);
}

bool camp_log_enabled(camp_level level) { return camp_extension_host_log_enabled(level); }

void camp_log(camp_level level, const char *fmt, ...) {
    if (!camp_log_enabled(level)) return;
    char line[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    plugin_string_t message = borrowed(line);
    camp_extension_host_log(level, &message);
}

uint64_t camp_monotonic_ms(void) { return camp_extension_host_monotonic_ms(); }
uint64_t camp_now_ms(void) { return camp_extension_host_now_ms(); }

uint64_t camp_session_id(camp_session s) {
    return camp_extension_host_method_session_id(s);
}

char *camp_session_get(camp_session s, const char *key) {
    plugin_string_t k = borrowed(key), value;
    if (!camp_extension_host_method_session_get(s, &k, &value)) return NULL;
    char *out = malloc(value.len + 1);
    if (out == NULL) abort();
    memcpy(out, value.ptr, value.len);
    out[value.len] = 0;
    plugin_string_free(&value);
    return out;
}

void camp_session_set(camp_session s, const char *key, const char *value) {
    plugin_string_t k = borrowed(key), v = borrowed(value);
    camp_extension_host_method_session_set(s, &k, &v);
}

void camp_session_remove(camp_session s, const char *key) {
    plugin_string_t k = borrowed(key), old;
    if (camp_extension_host_method_session_remove(s, &k, &old)) plugin_string_free(&old);
}

void camp_send_utf8(camp_session s, const char *text, size_t len) {
    plugin_string_t t = {(uint8_t *)text, len};
    camp_extension_host_method_session_send_utf8(s, &t);
}

void camp_send_error(camp_session s, const char *text, size_t len) {
    plugin_string_t t = {(uint8_t *)text, len};
    camp_extension_host_method_session_send_error(s, &t);
}

void camp_close(camp_session s, const char *reason) {
    plugin_string_t r = borrowed(reason);
    camp_extension_host_method_session_close(s, &r);
}

/* ---- the exports ---- */

#define P camp_plugin_definition

void exports_plugin_name(plugin_string_t *ret) {
    plugin_string_dup(ret, P.name ? P.name : "c-plugin");
}

plugin_hook_set_t exports_plugin_hooks(void) { return P.hooks; }

bool exports_plugin_on_register(plugin_string_t *config, plugin_string_t *err) {
    const char *refused = NULL;
    if (P.on_register) {
        camp_str c = {(const char *)config->ptr, config->len};
        refused = P.on_register(c);
    }
    plugin_string_free(config);
    if (refused == NULL) return true;
    plugin_string_dup(err, refused);
    return false;
}

void exports_plugin_on_unregister(void) {
    if (P.on_unregister) P.on_unregister();
}

void exports_plugin_session_opened(plugin_borrow_session_t session) {
    if (P.session_opened) P.session_opened(session);
}

void exports_plugin_session_closed(plugin_borrow_session_t session) {
    if (P.session_closed) P.session_closed(session);
}

#define TEXT_HOOK(export, field)                                                  \
    void export(plugin_borrow_session_t session, plugin_string_t *text,           \
                plugin_action_t *ret) {                                           \
        camp_str t = {(const char *)text->ptr, text->len};                        \
        *ret = P.field ? P.field(session, t) : camp_pass();                       \
        plugin_string_free(text);                                                 \
    }
#define BYTES_HOOK(export, field)                                                 \
    void export(plugin_borrow_session_t session, plugin_list_u8_t *data,          \
                plugin_action_t *ret) {                                           \
        camp_bytes d = {data->ptr, data->len};                                    \
        *ret = P.field ? P.field(session, d) : camp_pass();                       \
        plugin_list_u8_free(data);                                                \
    }

TEXT_HOOK(exports_plugin_before_send_utf8, before_send_utf8)
BYTES_HOOK(exports_plugin_before_send_binary, before_send_binary)
TEXT_HOOK(exports_plugin_before_send_error, before_send_error)
TEXT_HOOK(exports_plugin_on_receive_utf8, on_receive_utf8)
BYTES_HOOK(exports_plugin_on_receive_binary, on_receive_binary)
TEXT_HOOK(exports_plugin_on_receive_error, on_receive_error)
