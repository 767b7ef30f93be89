using System.Text;

namespace Dingo.Cells;

/// <summary>The PostgreSQL settings every node gets whatever runs it (replication, HA, archiving), in one place.</summary>
internal static class NodeSettings
{
    public static StringBuilder AppendReplicationSettings(this StringBuilder conf) => conf
        .AppendLine("wal_level = replica")
        .AppendLine("max_wal_senders = 10")
        .AppendLine("max_replication_slots = 10")
        .AppendLine("hot_standby = on")
        .AppendLine("wal_log_hints = on")
        .AppendLine("wal_keep_size = '128MB'")
        // A slot nobody reads (an archiver that cannot reach its store) may hold this much WAL, no more.
        .AppendLine("max_slot_wal_keep_size = '1GB'")
        .AppendLine("hot_standby_feedback = on")
        .AppendLine("wal_receiver_status_interval = 1s")
        .AppendLine("wal_retrieve_retry_interval = 1s")
        .AppendLine("recovery_target_timeline = 'latest'");
    // Not recovery_init_sync_method = syncfs: it made crash recovery in place faster under bench/Chaos, but every start
    // after a crash, a clone or a restore then flushed the whole file system, every other node's dirty pages with it,
    // and the test suite's restores and clones slowed by 10-25 % (fresh178, fresh179: 898 s and 917 s against 802 s).
}
