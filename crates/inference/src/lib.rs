pub mod prefix_index;
pub mod prom_text;
pub mod request;
pub mod scrape;
pub mod signals;
