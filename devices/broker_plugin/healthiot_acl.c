/*
 * healthiot's Mosquitto plugin: the whole topic policy, checked on every SUBSCRIBE too.
 *
 * Why a plugin: Mosquitto 2.0's acl_file answers "allowed" to every SUBSCRIBE (it checks
 * only publish and delivery), so a device could subscribe to '#' or join the bridge's
 * shared subscription and be handed other devices' telemetry, which the read ACL then
 * drops after the publisher got its PUBACK. The dynamic-security plugin does check
 * subscriptions, but certificate logins bypass it. This plugin (API v5, Mosquitto 2.0)
 * replaces the acl_file; it is built at set-up from Debian's mosquitto-dev headers
 * (devices/broker_plugin.py).
 *
 * Policy (every option is written by devices/broker_config.py):
 *   - a device identity (any username without the service prefix) may publish only to
 *     devices/<id>/telemetry and devices/<id>/csr, never retained, subscribe only to exactly
 *     devices/<id>/inbox (no wildcard, no $share group), and is denied everything under a
 *     client id other than its id;
 *   - a service identity gets what its plugin_opt_read / plugin_opt_write grants say; a
 *     grant to read a filter also allows subscribing to it inside a $share group;
 *   - the revoker publishes a device id to $CONTROL/healthiot/v1/disconnect: the plugin
 *     ends every session of that identity, under any client id. The revoker reloads the
 *     CRL first, so a revoked certificate's next handshake fails; a device whose old
 *     certificate alone was revoked comes back with its new one.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define CONTROL_TOPIC "$CONTROL/healthiot/v1/disconnect"
#define MAX_GRANTS 32
#define MAX_ID 64

struct grant {
	char *identity;
	char *filter;
	int access;  /* MOSQ_ACL_READ or MOSQ_ACL_WRITE */
};

static mosquitto_plugin_id_t *plugin_id;
static struct grant grants[MAX_GRANTS];
static int grant_count;
static char *service_prefix;
static char *revoker;
/* The client whose disconnection Mosquitto is handling: its will, published in the same
 * call, comes next. Cleared at the next tick. */
static const struct mosquitto *departing;

static bool is_service(const char *username)
{
	return strncmp(username, service_prefix, strlen(service_prefix)) == 0;
}

/* "devices/<id>/<leaf>", exactly. */
static bool is_own_topic(const char *topic, const char *id, const char *leaf)
{
	size_t n = strlen(id);
	return strncmp(topic, "devices/", 8) == 0 && strncmp(topic + 8, id, n) == 0
		&& topic[8 + n] == '/' && strcmp(topic + 9 + n, leaf) == 0;
}

/* A device's only client id is its id (the devices' listener imposes it; a device that
 * reached the services' listener under another id gets nothing through). */
static bool owns_client_id(const char *username, const char *client_id)
{
	return client_id != NULL && strcmp(client_id, username) == 0;
}

/* Mosquitto forwards a Payload Format Indicator of any value, but MQTT v5 allows only 0
 * and 1, and a client library reading another value drops its whole connection: one such
 * message would cut the bridge off at every redelivery. Checked on each PUBLISH (the ACL
 * check is not given the properties, the message event is). */
static bool sound_properties(const mosquitto_property *properties)
{
	uint8_t format = 0;
	if(mosquitto_property_read_byte(properties, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR, &format,
				false) != NULL && format > 1){
		return false;
	}
	return true;
}

static int device_check(const struct mosquitto *client, const char *username,
		const char *topic, int access, bool retain)
{
	if(!owns_client_id(username, mosquitto_client_id(client))) return MOSQ_ERR_ACL_DENIED;
	switch(access){
		case MOSQ_ACL_WRITE:
			/* Nothing a device sends is kept for later subscribers: a retained message
			 * would reach every bridge that subscribes, again and again. Nor is a
			 * device's will published: it would go out after its connection ended, its
			 * properties unchecked. */
			if(retain || client == departing) return MOSQ_ERR_ACL_DENIED;
			return is_own_topic(topic, username, "telemetry") || is_own_topic(topic, username, "csr")
				? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_SUBSCRIBE:
		case MOSQ_ACL_READ:
			return is_own_topic(topic, username, "inbox") ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

/* The filter without its "$share/<group>/" prefix, or NULL if the group is malformed. */
static const char *unshared(const char *filter)
{
	if(strncmp(filter, "$share/", 7) != 0) return filter;
	const char *slash = strchr(filter + 7, '/');
	if(slash == NULL || slash == filter + 7) return NULL;
	return slash + 1;
}

static int service_check(const char *username, const char *topic, int access)
{
	if(access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	const char *wanted = access == MOSQ_ACL_SUBSCRIBE ? unshared(topic) : topic;
	if(wanted == NULL) return MOSQ_ERR_ACL_DENIED;
	for(int i = 0; i < grant_count; i++){
		if(strcmp(grants[i].identity, username) != 0) continue;
		if(access == MOSQ_ACL_SUBSCRIBE){
			/* A subscription must be one of the granted filters, verbatim. */
			if(grants[i].access == MOSQ_ACL_READ && strcmp(grants[i].filter, wanted) == 0){
				return MOSQ_ERR_SUCCESS;
			}
		}else if(grants[i].access == access){
			bool match = false;
			if(mosquitto_topic_matches_sub(grants[i].filter, wanted, &match) == MOSQ_ERR_SUCCESS
					&& match){
				return MOSQ_ERR_SUCCESS;
			}
		}
	}
	return MOSQ_ERR_ACL_DENIED;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event; (void)userdata;
	const char *username = mosquitto_client_username(ed->client);
	if(username == NULL || ed->topic == NULL) return MOSQ_ERR_ACL_DENIED;
	int rc = is_service(username)
		? service_check(username, ed->topic, ed->access)
		: device_check(ed->client, username, ed->topic, ed->access, ed->retain);
	if(rc != MOSQ_ERR_SUCCESS && (ed->access == MOSQ_ACL_SUBSCRIBE || ed->access == MOSQ_ACL_WRITE)){
		/* Counted by the log watcher (devices/takeover.py); ids only, never the topic. */
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "healthiot: refused %s by %s",
			ed->access == MOSQ_ACL_SUBSCRIBE ? "subscribe" : "publish", username);
	}
	return rc;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	(void)event; (void)userdata;
	const char *username = mosquitto_client_username(ed->client);
	if(username == NULL || is_service(username) || sound_properties(ed->properties)){
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "healthiot: refused publish by %s", username);
	return MOSQ_ERR_ACL_DENIED;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	(void)event; (void)userdata;
	departing = ed->client;
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event; (void)event_data; (void)userdata;
	departing = NULL;
	return MOSQ_ERR_SUCCESS;
}

static bool is_device_id(const char *value, uint32_t len)
{
	if(len < 3 || len > MAX_ID - 1) return false;
	for(uint32_t i = 0; i < len; i++){
		char c = value[i];
		if(!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && i > 0))){
			return false;
		}
	}
	return strncmp(value, service_prefix, strlen(service_prefix)) != 0;
}

static int on_control(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	(void)event; (void)userdata;
	const char *username = mosquitto_client_username(ed->client);
	if(username == NULL || strcmp(username, revoker) != 0) return MOSQ_ERR_ACL_DENIED;
	if(!is_device_id(ed->payload, ed->payloadlen)) return MOSQ_ERR_INVAL;
	char id[MAX_ID];
	memcpy(id, ed->payload, ed->payloadlen);
	id[ed->payloadlen] = '\0';
	/* Every session of the identity, whatever its client id; no will is sent. */
	mosquitto_kick_client_by_username(id, false);
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "healthiot: every session of %s ended", id);
	return MOSQ_ERR_SUCCESS;
}

static int add_grant(const char *key, const char *value)
{
	/* plugin_opt_read:<identity> <filter>  or  plugin_opt_write:<identity> <filter>;
	 * several filters are separated by spaces. */
	int access;
	const char *identity;
	if(strncmp(key, "read:", 5) == 0){ access = MOSQ_ACL_READ; identity = key + 5; }
	else if(strncmp(key, "write:", 6) == 0){ access = MOSQ_ACL_WRITE; identity = key + 6; }
	else return MOSQ_ERR_SUCCESS;
	char *copy = mosquitto_strdup(value);
	if(copy == NULL) return MOSQ_ERR_NOMEM;
	for(char *save = NULL, *f = strtok_r(copy, " ", &save); f; f = strtok_r(NULL, " ", &save)){
		if(grant_count == MAX_GRANTS){ mosquitto_free(copy); return MOSQ_ERR_INVAL; }
		grants[grant_count].identity = mosquitto_strdup(identity);
		grants[grant_count].filter = mosquitto_strdup(f);
		grants[grant_count].access = access;
		grant_count++;
	}
	mosquitto_free(copy);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "service_prefix") == 0){
			service_prefix = mosquitto_strdup(options[i].value);
		}else if(strcmp(options[i].key, "revoker") == 0){
			revoker = mosquitto_strdup(options[i].value);
		}else if(add_grant(options[i].key, options[i].value) != MOSQ_ERR_SUCCESS){
			return MOSQ_ERR_INVAL;
		}
	}
	if(service_prefix == NULL || revoker == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "healthiot: service_prefix and revoker are required");
		return MOSQ_ERR_INVAL;
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL,
			NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	if(rc) return rc;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata; (void)options; (void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	for(int i = 0; i < grant_count; i++){
		mosquitto_free(grants[i].identity);
		mosquitto_free(grants[i].filter);
	}
	grant_count = 0;
	mosquitto_free(service_prefix);
	mosquitto_free(revoker);
	service_prefix = revoker = NULL;
	return MOSQ_ERR_SUCCESS;
}
