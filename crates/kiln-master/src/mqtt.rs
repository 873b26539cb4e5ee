//! The MQTT remote trigger (Reimzul's): signed build requests on
//! `PREFIX/trigger`.
