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
    // recovery_init_sync_method = syncfs only for a leader's restart in place after a crash (StandbyConfig.LeaderAfterCrash):
    // for every start after a crash, a clone or a restore it would flush the whole file system, every other node's dirty
    // pages with it.
}
